"""A seccomp-BPF syscall filter, assembled by hand so no library is needed.

The host builds the program once and hands it to the worker in its start-up config; the worker
installs it (prctl PR_SET_NO_NEW_PRIVS, then PR_SET_SECCOMP) right after it has dropped its uid
and before it says hello, so no user code ever runs without it, and refuses to run if that
fails. (bubblewrap's own `--seccomp FD` cannot be used: it installs the filter before it
executes Python, and this filter forbids execve.) It is a deny list on top of the namespaces,
not a replacement for them: it closes what the namespaces and the uid drop leave open or merely
make harmless.

- New processes and programs: fork, vfork, clone without CLONE_THREAD (threads still work),
  clone3 (answered ENOSYS so glibc falls back to clone, whose flags a filter can read), execve,
  execveat. This is also what makes RLIMIT_NPROC moot for fork bombs.
- Sockets other than AF_UNIX (AF_INET, AF_INET6, netlink, packet, vsock, AF_ALG, ...): the
  network namespace already has no route out; this removes the kernel surface too.
- Debugging and cross-process access: ptrace, process_vm_readv/writev, pidfd_getfd, kcmp.
- Namespace and mount changes: unshare, setns, mount, umount2, pivot_root, chroot, the new
  mount API (open_tree, move_mount, fsopen, fsconfig, fsmount, fspick, mount_setattr).
- Memory that no rlimit counts: memfd_create and memfd_secret (anonymous files grown with
  fallocate), SysV shared memory, semaphores and message queues (shmget & co., msgget & co.),
  POSIX message queues (mq_*). The per-sandbox memory cgroup (cgroup.py) bounds the rest.
- Machine-wide tables a sandbox could fill for everyone: the AIO context table (io_setup & co.,
  `fs.aio-max-nr`) and io_uring. (Pseudo-terminals are hidden by the mount layout instead.)
- Historically risky kernel interfaces: bpf, perf_event_open, userfaultfd, io_uring_*, keyctl,
  add_key, request_key, open_by_handle_at, name_to_handle_at, kexec_*, *_module, reboot, swapon,
  swapoff, acct, quotactl, syslog, iopl, ioperm, mknod(at), personality, settimeofday & co.
- Foreign ABIs: any syscall made through the i386 (int 0x80) or x32 ABIs kills the process, since
  the numbers above would not match them.

Only x86_64 is assembled here; on other architectures `build_filter()` returns None and the
sandbox says "seccomp: unavailable" in its layer report (namespaces, uid and rlimits still apply).
"""

from __future__ import annotations

import errno
import platform
import struct

# BPF opcodes (linux/filter.h) and seccomp return values (linux/seccomp.h).
_LD_W_ABS = 0x20
_JEQ_K = 0x15
_JGE_K = 0x35
_JSET_K = 0x45
_RET_K = 0x06
_RET_KILL_PROCESS = 0x80000000
_RET_ERRNO = 0x00050000
_RET_ALLOW = 0x7FFF0000
_AUDIT_ARCH_X86_64 = 0xC000003E
_X32_SYSCALL_BIT = 0x40000000
_CLONE_THREAD = 0x00010000
_AF_UNIX = 1

# x86_64 syscall numbers (arch/x86/entry/syscalls/syscall_64.tbl).
X86_64_DENIED: dict[str, int] = {
    "fork": 57, "vfork": 58, "execve": 59, "execveat": 322, "ptrace": 101,
    "process_vm_readv": 310, "process_vm_writev": 311, "pidfd_getfd": 438, "kcmp": 312,
    "unshare": 272, "setns": 308, "mount": 165, "umount2": 166, "pivot_root": 155, "chroot": 161,
    "open_tree": 428, "move_mount": 429, "fsopen": 430, "fsconfig": 431, "fsmount": 432,
    "fspick": 433, "mount_setattr": 442, "bpf": 321, "perf_event_open": 298, "userfaultfd": 323,
    "io_uring_setup": 425, "io_uring_enter": 426, "io_uring_register": 427, "keyctl": 250,
    "add_key": 248, "request_key": 249, "open_by_handle_at": 304, "name_to_handle_at": 303,
    "kexec_load": 246, "kexec_file_load": 320, "init_module": 175, "finit_module": 313,
    "delete_module": 176, "reboot": 169, "swapon": 167, "swapoff": 168, "acct": 163,
    "quotactl": 179, "syslog": 103, "iopl": 172, "ioperm": 173, "mknod": 133, "mknodat": 259,
    "personality": 135, "settimeofday": 164, "clock_settime": 227, "adjtimex": 159,
    "clock_adjtime": 305, "lookup_dcookie": 212, "fanotify_init": 300, "vhangup": 153,
    "uselib": 134, "sethostname": 170, "setdomainname": 171,
    # Memory no rlimit sees (issue 13): anonymous files, SysV and POSIX IPC objects.
    "memfd_create": 319, "memfd_secret": 447, "shmget": 29, "shmat": 30, "shmctl": 31, "shmdt": 67,
    "semget": 64, "semop": 65, "semctl": 66, "semtimedop": 220, "msgget": 68, "msgsnd": 69,
    "msgrcv": 70, "msgctl": 71, "mq_open": 240, "mq_unlink": 241, "mq_timedsend": 242,
    "mq_timedreceive": 243, "mq_notify": 244, "mq_getsetattr": 245,
    # System-wide tables one sandbox could fill for the whole machine: the AIO context table.
    "io_setup": 206, "io_destroy": 207, "io_getevents": 208, "io_submit": 209, "io_cancel": 210,
    "io_pgetevents": 333,
}  # fmt: skip
_CLONE, _CLONE3, _SOCKET = 56, 435, 41


def build_filter() -> bytes | None:
    """The filter program as raw `struct sock_filter` records, or None off x86_64 Linux."""
    if platform.system() != "Linux" or platform.machine() not in ("x86_64", "AMD64"):
        return None
    # (opcode, jump-if-true label, jump-if-false label, k); labels resolve to forward offsets.
    prog: list[tuple[int, str | None, str | None, int]] = [
        (_LD_W_ABS, None, None, 4),  # seccomp_data.arch
        (_JEQ_K, None, "kill", _AUDIT_ARCH_X86_64),
        (_LD_W_ABS, None, None, 0),  # seccomp_data.nr
        (_JGE_K, "kill", None, _X32_SYSCALL_BIT),
    ]
    prog += [(_JEQ_K, "deny", None, nr) for nr in sorted(set(X86_64_DENIED.values()))]
    prog += [
        (_JEQ_K, "clone", None, _CLONE),
        (_JEQ_K, "enosys", None, _CLONE3),
        (_JEQ_K, "socket", None, _SOCKET),
        (_RET_K, None, None, _RET_ALLOW),
    ]
    labels = {"clone": len(prog)}
    prog += [(_LD_W_ABS, None, None, 16), (_JSET_K, "allow", "deny", _CLONE_THREAD)]  # args[0] low word
    labels["socket"] = len(prog)
    prog += [(_LD_W_ABS, None, None, 16), (_JEQ_K, "allow", "deny", _AF_UNIX)]  # the address family
    for name, ret in (("allow", _RET_ALLOW), ("deny", _RET_ERRNO | errno.EPERM),
                      ("enosys", _RET_ERRNO | errno.ENOSYS), ("kill", _RET_KILL_PROCESS)):  # fmt: skip
        labels[name] = len(prog)
        prog.append((_RET_K, None, None, ret))

    def offset(at: int, label: str | None) -> int:
        if label is None:
            return 0
        off = labels[label] - (at + 1)
        if not 0 <= off <= 255:
            raise ValueError("seccomp jump out of range")
        return off

    return b"".join(
        struct.pack("=HBBI", code, offset(i, jt), offset(i, jf), k)
        for i, (code, jt, jf, k) in enumerate(prog)
    )


_CACHED: list[bytes | None] = []


def filter_program() -> bytes | None:
    """The program, built once per host process (None where unsupported)."""
    if not _CACHED:
        _CACHED.append(build_filter())
    return _CACHED[0]

"""How a worker process is started: the bubblewrap command line, or the rlimit-only fallback.

bwrap mode builds a new mount namespace whose root is an empty tmpfs holding only:

- the interpreter: the host Python's `lib/` tree (stdlib, lib-dynload, libpython) bound
  read-only at /opt/rlm/python/lib and its executable at /opt/rlm/python/bin/python3 (never the
  prefix's bin/, so no pip or other scripts), and, when allowed, the environment's site-packages at
  /opt/rlm/site-packages. Binding under a neutral path, not the host path, is what keeps /root
  (where pyenv lives) and /work (where the venv lives) out of the sandbox entirely;
- the shared libraries it loads (/usr/lib, /usr/lib64, the /lib and /lib64 links, ld.so.cache);
- a fresh /proc for its own pid namespace, a minimal /dev, a size-capped private tmpfs on /tmp.

It also gets new ipc, uts, net, pid and cgroup namespaces, `--die-with-parent` and
`--new-session`. bwrap's own small init (uid 0, no capabilities) is the pid namespace's init and
the worker its only child: when the worker ends, the init ends and the kernel kills everything
left inside; when the host dies, bwrap and then that init get their death signal (see below), so
nothing outlives the host, not even a worker holding its GIL in C code. /dev/pts is covered by an
empty read-only tmpfs (no pseudo-terminals: they are a machine-wide table).
When the host runs as root, bwrap keeps only CAP_SETUID and CAP_SETGID, which the worker uses
once, before any user code, to become a uid of its own (so RLIMIT_NPROC is enforced, and it owns
no host file); we do not use a user namespace there, since as root it would map the sandbox uid
to host root, the owner of every host file. As a non-root host user, bwrap's user namespace maps
to that user instead, which is fine.

rlimit mode is a plain child process with a scrubbed environment and its own session: the
limits are the only protection it has.
"""

from __future__ import annotations

import functools
import itertools
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from rlm_env.sandbox.cgroup import unavailable_reason
from rlm_env.sandbox.config import SandboxConfig
from rlm_env.sandbox.seccomp import filter_program

INSIDE_PREFIX = "/opt/rlm/python"
INSIDE_EXE = INSIDE_PREFIX + "/bin/python3"
INSIDE_SITE = "/opt/rlm/site-packages"
PY_FLAGS = ["-s", "-S", "-P", "-B"]  # no user site, no site.py, no cwd on sys.path, no .pyc writes
BOOT = (
    "import sys\n"
    "m = type(sys)('rlm_worker_io')\n"
    "exec(compile(sys.argv[1], '<rlm-worker-io>', 'exec'), m.__dict__)\n"
    "sys.modules['rlm_worker_io'] = m\n"
    "t = type(sys)('rlm_worker_tools')\n"
    "exec(compile(sys.argv[2], '<rlm-worker-tools>', 'exec'), t.__dict__)\n"
    "sys.modules['rlm_worker_tools'] = t\n"
    "x = type(sys)('rlm_worker_extras')\n"
    "exec(compile(sys.argv[3], '<rlm-worker-extras>', 'exec'), x.__dict__)\n"
    "sys.modules['rlm_worker_extras'] = x\n"
    "exec(compile(sys.argv[4], '<rlm-worker>', 'exec'), {'__name__': 'rlm_worker'})\n"
)
RLIMIT_WARNING = (
    "The REPL sandbox is running in rlimit-only mode{why}: model-written code runs as a plain "
    "child process limited only in memory, CPU time, open files and file size. It can read and "
    "write whatever this user can, reach the network and start programs. Do not run untrusted "
    "models this way; install bubblewrap (apt-get install bubblewrap) for real isolation."
)


class SandboxUnavailable(RuntimeError):
    """The requested isolation mode cannot be provided on this machine."""


@dataclass
class LaunchSpec:
    """Everything `asyncio.create_subprocess_exec` needs to start one worker."""

    argv: list[str]
    env: dict[str, str]
    cwd: str
    pass_fds: tuple[int, ...]
    uid: int | None = None
    seccomp: bool = False
    scratch_dir: str | None = None
    """rlimit mode's private working directory, removed when the worker is gone."""
    binds: list[tuple[str, str]] = field(default_factory=list)


@functools.cache
def _sources() -> tuple[str, str, str, str]:
    here = Path(__file__).parent
    names = ("worker_io.py", "worker_tools.py", "worker_extras.py", "worker.py")
    return tuple((here / name).read_text() for name in names)  # type: ignore[return-value]


def _site_dirs() -> list[str]:
    paths = sysconfig.get_paths()
    out = []
    for key in ("purelib", "platlib"):
        p = os.path.realpath(paths[key])
        if os.path.isdir(p) and p not in out:
            out.append(p)
    return out


def _system_binds() -> list[str]:
    """bwrap arguments for the dynamic loader and shared libraries (and nothing else of /usr)."""
    args: list[str] = []
    for d in ("/usr/lib", "/usr/lib64", "/usr/lib32"):
        if os.path.isdir(d) and not os.path.islink(d):
            args += ["--ro-bind", d, d]
    for d in ("/lib", "/lib64", "/lib32"):
        if os.path.islink(d):
            args += ["--symlink", os.readlink(d), d]
        elif os.path.isdir(d):
            args += ["--ro-bind", d, d]
    if os.path.exists("/etc/ld.so.cache"):
        args += ["--ro-bind", "/etc/ld.so.cache", "/etc/ld.so.cache"]
    return args


def _bwrap_prefix(config: SandboxConfig, drop_uid: bool) -> tuple[list[str], list[tuple[str, str]]]:
    bwrap = shutil.which("bwrap") or "/usr/bin/bwrap"
    exe = os.path.realpath(sys.executable)
    lib = os.path.join(os.path.realpath(sys.base_prefix), "lib")
    binds = [(lib, INSIDE_PREFIX + "/lib"), (exe, INSIDE_EXE)]
    if config.allow_site_packages:
        binds += [(p, f"{INSIDE_SITE}{i or ''}") for i, p in enumerate(_site_dirs())]
    args = [bwrap, "--unshare-ipc", "--unshare-pid", "--unshare-net", "--unshare-uts"]
    # Not --as-pid-1: bwrap's own init (uid 0, like its parent) must be the namespace's init.
    # --die-with-parent arms PR_SET_PDEATHSIG in that init; when the host dies, bwrap dies, the
    # init gets SIGKILL (same uid, so the kernel delivers it; it is forced, coming from the parent
    # namespace) and the kernel then kills everything inside, the worker too, without needing
    # the worker's GIL. (The worker's own death signal cannot work: bwrap has no CAP_KILL and
    # the worker runs as another uid, so the kernel drops it. Issue 13.)
    args += ["--unshare-cgroup-try", "--die-with-parent", "--new-session"]
    if os.geteuid() == 0:
        args += ["--cap-drop", "ALL"]
        if drop_uid:
            args += ["--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"]
    else:
        args += ["--unshare-user"]
    mounts = _system_binds()
    for src, dst in binds:
        mounts += ["--ro-bind", src, dst]
    for p in config.extra_ro_binds:
        mounts += ["--ro-bind", p, p]
    # bwrap creates missing parents of mount points as 0700, which the unprivileged uid could
    # not traverse: create them 0755 first.
    parents: list[str] = []
    for i, arg in enumerate(mounts):
        if arg in ("--ro-bind", "--symlink"):
            dst = Path(mounts[i + 2])
            parents += [str(d) for d in reversed(dst.parents) if str(d) != "/" and str(d) not in parents]
    for d in parents:
        args += ["--perms", "0755", "--dir", d]
    args += mounts
    args += ["--proc", "/proc", "--dev", "/dev"]
    # No pseudo-terminals: every pty opened in any namespace counts against the machine-wide
    # kernel.pty.max. An empty read-only tmpfs over /dev/pts hides the devpts instance (and so
    # /dev/ptmx, a link to pts/ptmx); the worker cannot unmount it (no capability, no umount).
    args += ["--perms", "0555", "--size", "4096", "--tmpfs", "/dev/pts"]
    args += ["--perms", "1777", "--size", str(config.tmp_size_mb * 1024 * 1024), "--tmpfs", "/tmp"]
    args += ["--remount-ro", "/", "--chdir", "/tmp"]
    return args, binds


@functools.cache
def probe_bwrap() -> tuple[bool, str]:
    """(works, why not): try the real command line once per host process."""
    if not sys.platform.startswith("linux"):
        return False, f"bubblewrap needs Linux (this is {sys.platform})"
    if not shutil.which("bwrap") and not os.path.exists("/usr/bin/bwrap"):
        return False, "bwrap is not installed"
    args, _ = _bwrap_prefix(SandboxConfig(), drop_uid=False)
    try:
        r = subprocess.run(
            [*args, "--", INSIDE_EXE, *PY_FLAGS, "-c", "import json"],
            env=_env("bwrap", "/tmp", 0),
            capture_output=True,
            timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        return False, f"bwrap failed to run ({e})"
    if r.returncode != 0:
        return False, f"bwrap failed: {r.stderr.decode(errors='replace').strip()[:300]}"
    return True, ""


def resolve_mode(config: SandboxConfig) -> tuple[str, str | None]:
    """("bwrap", None) or ("rlimit", warning sentence); raises if "bwrap" is required but missing."""
    if config.mode == "rlimit":
        return "rlimit", RLIMIT_WARNING.format(why=" (asked for by the config)")
    ok, why = probe_bwrap()
    if ok:
        return "bwrap", _cgroup_warning(config)
    if config.mode == "bwrap":
        raise SandboxUnavailable(f"SandboxConfig.mode='bwrap' but bubblewrap cannot be used: {why}")
    return "rlimit", RLIMIT_WARNING.format(why=f" ({why})")


def _cgroup_warning(config: SandboxConfig) -> str | None:
    """None when each sandbox gets a memory cgroup; else the sentence saying what is unbounded."""
    if config.memory_cgroup == "off":
        why = "turned off by the config"
    else:
        why = unavailable_reason()
        if not why:
            return None
        if config.memory_cgroup == "required":
            raise SandboxUnavailable(f"SandboxConfig.memory_cgroup='required' but: {why}")
    return (
        f"The REPL sandbox runs without a memory cgroup ({why}): its memory is bounded by "
        "RLIMIT_AS and the /tmp size only, so kernel memory it causes (inodes of many small files "
        "in /tmp, pipe and socket buffers, page tables) is not bounded per sandbox."
    )


_counter = itertools.count()


@functools.cache
def _uid_window() -> tuple[int, int]:
    """(first uid, how many) we may hand out: high above real users, inside this host's uid map."""
    lo, count = 0, 1 << 32
    try:
        ranges = [tuple(map(int, ln.split())) for ln in Path("/proc/self/uid_map").read_text().splitlines()]
        inside, _outside, count = max(ranges, key=lambda r: r[2])
        lo = inside
    except (OSError, ValueError):
        pass
    if count > 120_000_000:
        return lo + 10_000_000, 100_000_000
    return lo + count // 2, count // 2 - 1


_in_use: set[int] = set()


def allocate_uid() -> int:
    """A uid no other live sandbox uses: (host pid, per-process counter) mapped into the window.

    Within this process, uids of live workers are skipped; across host processes the pid keeps
    the ranges apart (1000 uids each, as long as host pids differ modulo 100,000).
    """
    first, size = _uid_window()
    for _ in range(1000):
        uid = first + ((os.getpid() % 100_000) * 1000 + next(_counter) % 1000) % size
        if uid not in _in_use:
            _in_use.add(uid)
            return uid
    raise SandboxUnavailable("more than 1000 live sandboxes in one process: no free sandbox uid")


def release_uid(uid: int | None) -> None:
    """The worker of `uid` is gone: the uid may be handed out again."""
    _in_use.discard(uid)


def _env(mode: str, tmp: str, hashseed: int) -> dict[str, str]:
    """The worker's whole environment: no PATH, no host variables, nothing secret."""
    env = {
        "PYTHONHASHSEED": str(hashseed),
        "PYTHONIOENCODING": "utf-8",
        "PYTHONDONTWRITEBYTECODE": "1",
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "HOME": tmp,
        "TMPDIR": tmp,
        "MALLOC_ARENA_MAX": "2",  # per-thread malloc arenas would eat RLIMIT_AS
        "OMP_NUM_THREADS": "1",
        "OPENBLAS_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
    }
    if mode == "bwrap":
        env["LD_LIBRARY_PATH"] = INSIDE_PREFIX + "/lib"  # libpython's RUNPATH names the host path
    return env


def build_launch(config: SandboxConfig, mode: str, sock_fd: int) -> LaunchSpec:
    """The command line, environment and descriptors for one worker talking on `sock_fd`."""
    root = os.geteuid() == 0
    drop = mode == "bwrap" and root and config.drop_privileges
    uid = allocate_uid() if drop else None
    rlimits = {
        "RLIMIT_AS": config.memory_limit_mb * 1024 * 1024,
        "RLIMIT_CPU": config.cpu_time_limit_s,
        "RLIMIT_NOFILE": config.max_open_files,
        "RLIMIT_FSIZE": config.max_file_size_mb * 1024 * 1024,
        "RLIMIT_CORE": 0,
    }
    if uid is not None:  # counted per real uid: only meaningful for a uid of the sandbox's own
        rlimits["RLIMIT_NPROC"] = config.max_processes
    prog = filter_program() if mode == "bwrap" and config.seccomp else None
    scratch = None
    if mode == "bwrap":
        prefix, binds = _bwrap_prefix(config, drop_uid=drop)
        exe, site, cwd, tmp = INSIDE_EXE, [], "/", "/tmp"
        if config.allow_site_packages:
            site = [f"{INSIDE_SITE}{i or ''}" for i in range(len(_site_dirs()))]
    else:
        scratch = tempfile.mkdtemp(prefix="rlm-sandbox-")
        prefix, binds, exe, cwd, tmp = [], [], sys.executable, scratch, scratch
        site = _site_dirs() if config.allow_site_packages else []
    worker_cfg = {
        "fd": sock_fd,
        "rlimits": rlimits,
        "uid": uid,
        "seccomp": prog.hex() if prog else None,
        "cell_timeout": config.cell_timeout_s,
        "max_output_chars": config.max_output_chars,
        "answer_max_bytes": config.answer_max_bytes,
        "max_batch": config.max_batch_prompts,
        "site": site,
    }
    io_src, tools_src, extras_src, worker_src = _sources()
    argv = [*prefix]
    if prefix:
        argv.append("--")
    argv += [exe, *PY_FLAGS, "-c", BOOT, io_src, tools_src, extras_src, worker_src, json.dumps(worker_cfg)]
    return LaunchSpec(
        argv=argv,
        env=_env(mode, tmp, config.pythonhashseed),
        cwd=cwd,
        pass_fds=(sock_fd,),
        uid=uid,
        seccomp=prog is not None,
        scratch_dir=scratch,
        binds=binds,
    )

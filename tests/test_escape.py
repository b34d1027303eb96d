"""Escape attempts against the real bubblewrap sandbox.

Every test plays one attack as model-written code, asserts that it failed, and asserts that the
host is intact: the host process and a canary host process are alive, the host still forks, and
the sandbox (restarted if need be) still answers. Each claim of the threat model in
`rlm_env.sandbox` is backed by at least one test here (named in the docstring's claims).
"""

# ruff: noqa: F811 - pytest fixtures imported from tests.sandbox_helpers are test arguments

from __future__ import annotations

import os
import pickle
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rlm_env.sandbox import prepare_context
from rlm_env.tasks.base import ContextDir
from tests.sandbox_helpers import (  # noqa: F401 - the fixtures are used as test arguments
    FAST,
    RecordingHandler,
    alive,
    assert_host_intact,
    canary,
    needs_bwrap,
    pids_of_uid,
    sandboxes,
    wait_gone,
)

pytestmark = needs_bwrap
THIS_FILE = str(Path(__file__).resolve())
REPO_ROOT = str(Path(__file__).resolve().parents[1])


# ---- the file system ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    ["/etc/shadow", "/etc/passwd", "/etc/hostname", f"{REPO_ROOT}/pyproject.toml", THIS_FILE,
     "/root/.bashrc", "/usr/bin/env", "/bin/sh", "/proc/1/root/etc/shadow"],
)  # fmt: skip
async def test_cannot_read_host_files(sandboxes, canary, path):
    sb = await sandboxes()
    r = await sb.run_cell(f"data = open({path!r}, 'rb').read()\nlen(data)")
    assert r.error is not None and ("FileNotFoundError" in r.error or "PermissionError" in r.error), r
    await assert_host_intact(sb, canary)


async def test_cannot_read_a_planted_secret(sandboxes, canary, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("TOKEN-3f9a1c")
    sb = await sandboxes()
    r = await sb.run_cell(
        f"import os\nprint(os.path.exists({str(tmp_path)!r}), os.path.exists({str(secret)!r}))\n"
        "hits = []\nfor d, dirs, files in os.walk('/'):\n"
        "    if d == '/': dirs[:] = [x for x in dirs if x not in ('proc', 'usr', 'opt', 'dev')]  # libs; ptmx blocks\n"
        "    for f in files:\n"
        "        try:\n"
        "            if b'TOKEN-3f9a1c' in open(os.path.join(d, f), 'rb').read(1 << 20): hits.append(f)\n"
        "        except OSError: pass\nhits"
    )
    assert r.output == "False False\n[]\n", r
    await assert_host_intact(sb, canary)


async def test_home_and_work_dirs_are_absent(sandboxes, canary):
    sb = await sandboxes()
    r = await sb.run_cell(
        "import os\n[os.path.expanduser('~'), sorted(os.listdir('/')), os.path.exists('/root'),"
        " os.path.exists('/home'), os.path.exists('/work'), os.path.exists('/usr/bin')]"
    )
    assert (
        r.output
        == "['/tmp', ['dev', 'etc', 'lib', 'lib64', 'opt', 'proc', 'tmp', 'usr'], False, False, False, False]\n"
    )
    await assert_host_intact(sb, canary)


@pytest.mark.parametrize(
    "path",
    ["/pwned", "/usr/lib/pwned", "/opt/rlm/python/lib/pwned", "/opt/rlm/site-packages/pwned", "/etc/pwned",
     "/dev/pwned", "/dev/shm/pwned", "/proc/sys/kernel/hostname", "/etc/ld.so.cache"],
)  # fmt: skip
async def test_cannot_write_outside_tmp(sandboxes, canary, path):
    sb = await sandboxes()
    r = await sb.run_cell(f"open({path!r}, 'w').write('x')")
    assert r.error is not None and any(
        e in r.error for e in ("OSError", "PermissionError", "FileNotFoundError")
    ), r
    assert not os.path.exists("/usr/lib/pwned") and not os.path.exists("/pwned")
    await assert_host_intact(sb, canary)


async def test_tmp_is_private_per_sandbox(sandboxes, canary):
    a, b = await sandboxes(), await sandboxes()
    assert (
        await a.run_cell("open('/tmp/marker-7c1', 'w').write('a')\nimport os; os.listdir('/tmp')")
    ).output == ("['marker-7c1']\n")
    assert (await b.run_cell("import os; os.listdir('/tmp')")).output == "[]\n"
    assert not os.path.exists("/tmp/marker-7c1")
    await assert_host_intact(a, canary)


async def test_tmp_and_file_sizes_are_bounded(sandboxes, canary):
    sb = await sandboxes(config=FAST.model_copy(update={"tmp_size_mb": 4, "max_file_size_mb": 2}))
    r = await sb.run_cell("open('/tmp/big', 'wb').write(b'x' * (3 << 20))")
    assert "File too large" in r.error, r
    r = await sb.run_cell(
        "n = 0\ntry:\n    while True:\n        open(f'/tmp/f{n}', 'wb').write(b'x' * (1 << 20)); n += 1\n"
        "except OSError as e:\n    print(n, e.strerror)"
    )
    assert "No space left on device" in r.output and int(r.output.split()[0]) <= 4, r
    await assert_host_intact(sb, canary)


async def test_context_file_cannot_be_modified(sandboxes, canary, tmp_path):
    pc = prepare_context("ORIGINAL CONTEXT", store_dir=tmp_path / "store")
    before = pc.path.read_bytes()
    sb = await sandboxes(context=pc)
    r = await sb.run_cell(
        "import os, mmap\nresults = []\n"
        "for fd in map(int, os.listdir('/proc/self/fd')):\n"
        "    target = os.readlink(f'/proc/self/fd/{fd}') if os.path.exists(f'/proc/self/fd/{fd}') else ''\n"
        "    for attack in ('write', 'reopen', 'mmap', 'fchmod'):\n"
        "        try:\n"
        "            if attack == 'write': os.write(fd, b'')\n"
        "            if attack == 'reopen': os.close(os.open(f'/proc/self/fd/{fd}', os.O_RDWR))\n"
        "            if attack == 'mmap': mmap.mmap(fd, 1, prot=mmap.PROT_WRITE)\n"
        "            if attack == 'fchmod': os.fchmod(fd, 0o666)\n"
        "            results.append((fd, target, attack, 'ok'))\n"
        "        except OSError: pass\n"
        f"print([r for r in results if '{pc.sha256}' in r[1]])\n"
        f"print(os.path.exists({str(pc.path)!r}), os.path.exists({str(pc.path.parent)!r}))\n"
        f"open({str(pc.path)!r}, 'w')"
    )
    assert r.output == "[]\nFalse False\n" and "FileNotFoundError" in r.error, r
    assert pc.path.read_bytes() == before and oct(pc.path.stat().st_mode)[-3:] == "444"
    await assert_host_intact(sb, canary)


async def test_writing_into_a_shared_context_str_stays_private(sandboxes, canary, tmp_path):
    pc = prepare_context("A" * (1 << 20), store_dir=tmp_path / "store")
    a, b = await sandboxes(context=pc), await sandboxes(context=pc)
    assert a.layers["context_shared"] and b.layers["context_shared"]
    r = await a.run_cell(
        "import ctypes, sys\n"
        "data = id(context) + sys.getsizeof(context) - len(context) - 1\n"
        "ctypes.memset(data, ord('B'), 1 << 20)\n"
        "context[:3], context.count('B')"
    )
    assert r.output == "('BBB', 1048576)\n", r  # its own copy-on-write pages
    assert (await b.run_cell("context[:3], context.count('B')")).output == "('AAA', 0)\n"
    assert pc.path.read_bytes() == b"A" * (1 << 20)
    await assert_host_intact(b, canary)


async def test_cannot_find_another_episodes_context(sandboxes, canary, tmp_path):
    store = tmp_path / "store"
    first = prepare_context("SECRET-OF-EPISODE-A " * 10, store_dir=store)
    a = await sandboxes(context=first)
    b = await sandboxes(context=prepare_context("episode b", store_dir=store))
    r = await b.run_cell(
        "import os\nhits = []\n"
        "for d in ('/tmp', '/dev/shm', '/etc', '/run', '/var'):\n"
        "    for root, _, files in os.walk(d):\n"
        "        for f in files:\n"
        "            try:\n"
        "                if b'SECRET-OF-EPISODE-A' in open(os.path.join(root, f), 'rb').read(1 << 16): hits.append(f)\n"
        "            except OSError: pass\n"
        "for pid in [p for p in os.listdir('/proc') if p.isdigit()]:\n"
        "    for fd in os.listdir(f'/proc/{pid}/fd') if os.access(f'/proc/{pid}/fd', os.R_OK) else []:\n"
        "        try: hits.append(os.readlink(f'/proc/{pid}/fd/{fd}'))\n"
        "        except OSError: pass\n"
        f"hits = [h for h in hits if 'SECRET' in h or {first.sha256!r} in h or 'rlm-env-contexts' in h]\n"
        f"hits, os.path.exists({str(first.path)!r}), os.path.exists('/dev/shm/rlm-env-contexts')"
    )
    assert r.output == "([], False, False)\n", r
    assert "SECRET-OF-EPISODE-A" in (await a.run_cell("context")).output
    await assert_host_intact(b, canary)


async def test_symlinks_in_a_context_dir_are_not_followed(sandboxes, canary, tmp_path):
    root = tmp_path / "ctx"
    root.mkdir()
    (root / "note.txt").write_text("fine")
    (root / "passwd").symlink_to("/etc/passwd")
    (root / "etc").symlink_to("/etc", target_is_directory=True)
    pc = prepare_context(ContextDir(root), store_dir=tmp_path / "store")
    sb = await sandboxes(context=pc)
    r = await sb.run_cell("sorted(context), any('root:' in v for v in context.values())")
    assert r.output == "(['note.txt'], False)\n" and len(pc.skipped) == 2
    await assert_host_intact(sb, canary)


async def test_dev_is_minimal(sandboxes, canary):
    sb = await sandboxes()
    r = await sb.run_cell(
        "import os\nextra = set(os.listdir('/dev')) - {'null', 'zero', 'full', 'random', 'urandom', 'tty', "
        "'ptmx', 'pts', 'shm', 'fd', 'stdin', 'stdout', 'stderr', 'core'}\n"
        "print(sorted(extra), [os.path.exists(p) for p in ('/dev/sda', '/dev/mem', '/dev/kmsg', '/dev/vda')])"
    )
    assert r.output == "[] [False, False, False, False]\n", r
    await assert_host_intact(sb, canary)


async def test_host_mounts_are_invisible(sandboxes, canary):
    sb = await sandboxes()
    r = await sb.run_cell(
        "points = [l.split()[4] for l in open('/proc/self/mountinfo')]\n"
        "sorted(p for p in points if p.startswith(('/work', '/root', '/home', '/mnt', '/media', '/srv', '/var')))"
    )
    assert r.output == "[]\n", r
    r = await sb.run_cell(
        "import os; sorted(os.listdir('/opt/rlm')), os.path.exists('/opt/rlm/python/bin/pip')"
    )
    assert r.output == "(['python', 'site-packages'], False)\n", r  # sorted below
    await assert_host_intact(sb, canary)


# ---- processes, signals, privileges ---------------------------------------------------------


@pytest.mark.parametrize(
    "code",
    [
        "import subprocess; subprocess.run(['/bin/sh', '-c', 'id'])",
        "import subprocess; subprocess.run(['/usr/bin/id'])",
        "import os; print('status', os.system('id'))",
        "import os, sys; os.execv(sys.executable, [sys.executable, '-c', 'print(1)'])",
        "import os, sys; os.posix_spawn(sys.executable, [sys.executable, '-c', 'print(1)'], {})",
        "import os; os.fork()",
        "import os; os.execv('/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2', ['ld'])",
    ],
)
async def test_cannot_start_programs(sandboxes, canary, code):
    sb = await sandboxes()
    r = await sb.run_cell(code)
    assert "uid=" not in r.output and not r.worker_restarted
    assert r.error is not None or r.output.startswith("status") and r.output.strip() != "status 0", r
    await assert_host_intact(sb, canary)


async def test_fork_bomb_is_bounded_even_without_seccomp(sandboxes, canary):
    cfg = FAST.model_copy(update={"seccomp": False, "max_processes": 12})
    sb = await sandboxes(config=cfg)
    r = await sb.run_cell(
        "import os, time\nkids = 0\n"
        "try:\n"
        "    for _ in range(10_000):\n"
        "        if os.fork() == 0:\n"
        "            time.sleep(60)\n"
        "            os._exit(0)\n"
        "        kids += 1\n"
        "except OSError as e:\n"
        "    print(kids, e.strerror)"
    )
    kids = int(r.output.split()[0])
    assert kids < 12 and "Resource temporarily unavailable" in r.output, r
    uid = sb.worker.uid
    assert len(pids_of_uid(uid)) == kids + 1
    await assert_host_intact(sb, canary)
    await sb.close()
    assert pids_of_uid(uid) == []


async def test_thread_bomb_is_bounded(sandboxes, canary):
    sb = await sandboxes(config=FAST.model_copy(update={"max_processes": 16}))
    r = await sb.run_cell(
        "import threading, time\nn = 0\n"
        "try:\n"
        "    while True:\n"
        "        threading.Thread(target=time.sleep, args=(30,), daemon=True).start(); n += 1\n"
        "except RuntimeError as e:\n"
        "    print(n, e)"
    )
    assert "can't start new thread" in r.output and int(r.output.split()[0]) < 16, r
    await assert_host_intact(sb, canary)


async def test_memory_bomb_is_contained(sandboxes, canary):
    sb = await sandboxes(config=FAST.model_copy(update={"memory_limit_mb": 300}))
    r = await sb.run_cell("blocks = []\nwhile True:\n    blocks.append(b'x' * (50 << 20))")
    assert "MemoryError" in (r.error or "") or r.worker_restarted, r
    await sb.run_cell("blocks = None")
    await assert_host_intact(sb, canary)


async def test_infinite_loop_is_stopped(sandboxes, canary):
    sb = await sandboxes(config=FAST.model_copy(update={"cell_timeout_s": 0.3}))
    r = await sb.run_cell("while True:\n    pass")
    assert r.timed_out
    await assert_host_intact(sb, canary)


async def test_disabling_the_timer_only_earns_a_restart(sandboxes, canary):
    sb = await sandboxes(config=FAST.model_copy(update={"cell_timeout_s": 0.3, "kill_grace_s": 0.4}))
    r = await sb.run_cell(
        "import signal\nsignal.signal(signal.SIGALRM, signal.SIG_IGN)\nsignal.setitimer(signal.ITIMER_REAL, 0)\n"
        "while True:\n    pass"
    )
    assert r.timed_out and r.worker_restarted
    await assert_host_intact(sb, canary)


async def test_cpu_time_limit_kills_a_spinning_worker(sandboxes, canary):
    cfg = FAST.model_copy(update={"cpu_time_limit_s": 1, "cell_timeout_s": 20, "kill_grace_s": 1})
    sb = await sandboxes(config=cfg)
    r = await sb.run_cell(
        "import signal\nsignal.signal(signal.SIGXCPU, signal.SIG_IGN)\nwhile True:\n    pass"
    )
    assert r.worker_restarted and not r.timed_out and "WorkerDied" in r.error, r
    await assert_host_intact(sb, canary)


@pytest.mark.parametrize(
    "attack",
    ["os.kill(HOST, signal.SIGKILL)", "os.kill(CANARY, signal.SIGKILL)", "os.killpg(HOST, signal.SIGKILL)",
     "os.kill(-1, signal.SIGKILL)", "os.kill(1, signal.SIGKILL)"],
)  # fmt: skip
async def test_cannot_signal_host_processes(sandboxes, canary, attack):
    sb = await sandboxes()
    code = f"import os, signal\nHOST, CANARY = {os.getpid()}, {canary.pid}\n{attack}\n'still here'"
    r = await sb.run_cell(code)
    if "HOST" in attack or "CANARY" in attack:  # no such pid in the sandbox's namespace
        assert "ProcessLookupError" in r.error, r
    else:  # -1 reaches only the sandbox's own processes; its init (the worker) ignores its own kill
        assert r.output == "'still here'\n" or "ProcessLookupError" in r.error or r.worker_restarted, r
    await assert_host_intact(sb, canary)


async def test_host_pids_are_invisible_in_proc(sandboxes, canary):
    sb = await sandboxes()
    r = await sb.run_cell(
        "import os\npids = sorted(int(p) for p in os.listdir('/proc') if p.isdigit())\n"
        f"print(pids, os.getpid(), os.path.exists('/proc/{os.getpid()}'), os.path.exists('/proc/{canary.pid}'))"
    )
    assert r.output == "[1] 1 False False\n", r  # the worker is the init of its own pid namespace
    await assert_host_intact(sb, canary)


async def test_ptrace_fails(sandboxes, canary):
    sb = await sandboxes()
    r = await sb.run_cell(
        "import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\n"
        f"res = [libc.ptrace(16, {os.getpid()}, 0, 0), ctypes.get_errno(), libc.ptrace(16, 2, 0, 0), libc.ptrace(0, 0, 0, 0)]\n"
        "res"
    )
    assert r.output == "[-1, 1, -1, -1]\n", r
    await assert_host_intact(sb, canary)


@pytest.mark.parametrize(
    "call",
    [
        "libc.unshare(0x10000000)",  # CLONE_NEWUSER
        "libc.unshare(0x20000)",  # CLONE_NEWNS
        "libc.mount(b'none', b'/tmp', b'tmpfs', 0, None)",
        "libc.chroot(b'/tmp')",
        "libc.setuid(0)",
        "libc.setns(0, 0)",
        "libc.syscall(155, b'/tmp', b'/tmp')",  # pivot_root
        "libc.syscall(321, 0, 0, 0)",  # bpf
        "libc.syscall(250, 0, 0, 0)",  # keyctl
        "libc.syscall(425, 8, 0)",  # io_uring_setup
        "libc.syscall(304, 0, 0, 0)",  # open_by_handle_at
        "libc.syscall(56, 17, 0, 0, 0, 0)",  # raw clone(SIGCHLD): a fork
    ],
)
async def test_ctypes_syscalls_are_denied(sandboxes, canary, call):
    sb = await sandboxes()
    r = await sb.run_cell(
        f"import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\n({call}, ctypes.get_errno())"
    )
    assert r.output.startswith("(-1, "), r
    await assert_host_intact(sb, canary)


async def test_no_privileges_left(sandboxes, canary):
    sb = await sandboxes()
    r = await sb.run_cell(
        "import os\nst = dict(l.split(':\\t', 1) for l in open('/proc/self/status'))\n"
        "print([st[k].strip() for k in ('CapEff', 'CapPrm', 'CapAmb', 'NoNewPrivs', 'Seccomp')], os.getuid() > 0)\n"
        "os.setuid(0)"
    )
    assert r.output == "['0000000000000000', '0000000000000000', '0000000000000000', '1', '2'] True\n"
    assert "PermissionError" in r.error
    await assert_host_intact(sb, canary)


async def test_huge_argv_exec_is_harmless(sandboxes, canary):
    sb = await sandboxes()
    r = await sb.run_cell(
        "import os, sys\nos.execv(sys.executable, [sys.executable] + ['x' * 100_000] * 100)"
    )
    assert r.error is not None and ("PermissionError" in r.error or "Argument list too long" in r.error)
    await assert_host_intact(sb, canary)


async def test_fd_exhaustion_is_bounded(sandboxes, canary):
    sb = await sandboxes(config=FAST.model_copy(update={"max_open_files": 64}), handler=RecordingHandler())
    r = await sb.run_cell(
        "fds = []\ntry:\n    while True:\n        fds.append(open('/dev/null'))\nexcept OSError as e:\n    print(len(fds), e.strerror)"
    )
    assert "Too many open files" in r.output and int(r.output.split()[0]) < 64, r
    assert (await sb.run_cell("llm_query('still works')")).output == "'llm_query:still works'\n"
    await assert_host_intact(sb, canary)


async def test_environment_is_scrubbed(sandboxes, canary, monkeypatch):
    monkeypatch.setenv("RLM_FAKE_SECRET", "sk-test-do-not-leak")
    sb = await sandboxes()
    r = await sb.run_cell("import os\nprint(sorted(os.environ))\nopen('/proc/self/environ', 'rb').read()")
    assert "RLM_FAKE_SECRET" not in r.output and "PATH'" not in r.output and "sk-test" not in r.output, r
    assert "PermissionError" in r.error  # the worker is not dumpable after its uid change
    r = await sb.run_cell(
        "import os\n[os.environ.get(k) for k in ('RLM_FAKE_SECRET', 'PATH', 'LD_LIBRARY_PATH')]"
    )
    assert r.output == "[None, None, None]\n"
    await assert_host_intact(sb, canary)


# ---- network --------------------------------------------------------------------------------


@pytest.mark.parametrize("seccomp", [True, False], ids=["seccomp", "netns-only"])
async def test_no_tcp_to_a_host_listener(sandboxes, canary, seccomp):
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(5)
    listener.setblocking(False)
    port = listener.getsockname()[1]
    try:
        sb = await sandboxes(config=FAST.model_copy(update={"seccomp": seccomp}))
        r = await sb.run_cell(
            f"import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_STREAM)\ns.settimeout(1)\n"
            f"s.connect(('127.0.0.1', {port}))"
        )
        assert r.error is not None and ("PermissionError" in r.error or "ConnectionRefused" in r.error
                                        or "unreachable" in r.error), r  # fmt: skip
        time.sleep(0.1)
        with pytest.raises(BlockingIOError):
            listener.accept()
        await assert_host_intact(sb, canary)
    finally:
        listener.close()


async def test_no_dns_and_no_inet6(sandboxes, canary):
    sb = await sandboxes()
    r = await sb.run_cell("import socket\nsocket.getaddrinfo('pypi.org', 443)")
    assert "gaierror" in r.error or "PermissionError" in r.error, r
    r = await sb.run_cell("import socket\nsocket.socket(socket.AF_INET6, socket.SOCK_DGRAM)")
    assert "PermissionError" in r.error
    await assert_host_intact(sb, canary)


async def test_no_abstract_unix_socket_to_the_host(sandboxes, canary):
    name = f"\0rlm-escape-test-{os.getpid()}"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(name)
    listener.listen(1)
    listener.setblocking(False)
    try:
        sb = await sandboxes()
        r = await sb.run_cell(f"import socket\nsocket.socket(socket.AF_UNIX).connect({name!r})")
        assert "ConnectionRefusedError" in r.error or "FileNotFoundError" in r.error, r
        with pytest.raises(BlockingIOError):
            listener.accept()
        await assert_host_intact(sb, canary)
    finally:
        listener.close()


# ---- the protocol ---------------------------------------------------------------------------

FIND_SOCKET = (
    "import os, stat, struct, json\n"
    "def is_sock(fd):\n"
    "    try: return stat.S_ISSOCK(os.fstat(fd).st_mode)\n"
    "    except OSError: return False\n"
    "SOCK = [fd for fd in range(64) if is_sock(fd)][0]\n"
)


async def test_forged_call_frames_only_reach_the_handler(sandboxes, canary):
    handler = RecordingHandler()
    sb = await sandboxes(handler=handler)
    r = await sb.run_cell(
        FIND_SOCKET + "msg = json.dumps({'op': 'call', 'id': 999, 'fn': 'llm_query', "
        "'args': {'prompt': 'forged', 'sampling': {'api_key': 'x'}}}).encode()\n"
        "os.write(SOCK, struct.pack('>I', len(msg)) + msg)\n"
        "n = struct.unpack('>I', os.read(SOCK, 4))[0]\njson.loads(os.read(SOCK, n))"
    )
    assert r.output == "{'op': 'call_result', 'id': 999, 'ok': True, 'value': 'llm_query:forged'}\n", r
    assert handler.calls == [("llm_query", {"prompt": "forged", "sampling": {"api_key": "x"}})]
    r = await sb.run_cell("llm_query.__globals__['_call']('exec_on_host', {'cmd': 'id'})")  # tampered stub
    assert "SubCallError" in r.error and "unknown sub-call function" in r.error
    assert len(handler.calls) == 1
    await assert_host_intact(sb, canary)


@pytest.mark.parametrize(
    "payload",
    [b"\x00\x00\x00\x05hello", b"\x7f\xff\xff\xff", b"\x00\x00\x00\x02[]", b'\x00\x00\x00\x0b{"op": 5}  '],
    ids=["not-json", "oversized", "not-an-object", "bad-op"],
)
async def test_garbage_frames_are_protocol_violations(sandboxes, canary, payload):
    sb = await sandboxes()
    t0 = time.monotonic()
    r = await sb.run_cell(FIND_SOCKET + f"os.write(SOCK, {payload!r})\nimport time\ntime.sleep(5)")
    assert time.monotonic() - t0 < 2
    assert r.worker_restarted and "ProtocolViolation" in r.error, r
    await assert_host_intact(sb, canary)


class _Exploit:
    """Unpickling this on the host would create the marker file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


async def test_pickle_and_marshal_payloads_are_never_loaded(sandboxes, canary, tmp_path):
    marker = tmp_path / "UNPICKLED"
    payloads = [pickle.dumps(_Exploit(marker), protocol=p) for p in (0, 2, 5)]
    payloads.append(b"\xe3" + bytes(40))  # a marshal code-object header
    for blob in payloads:
        sb = await sandboxes()
        frame = len(blob).to_bytes(4, "big") + blob
        r = await sb.run_cell(FIND_SOCKET + f"os.write(SOCK, {frame!r})\nimport time\ntime.sleep(5)")
        assert r.worker_restarted and "ProtocolViolation" in r.error, r
        await assert_host_intact(sb, canary)
    assert not marker.exists()


async def test_flooding_stdout_is_bounded(sandboxes, canary):
    sb = await sandboxes(config=FAST.model_copy(update={"cell_timeout_s": 0.5}))
    r = await sb.run_cell("while True:\n    print('spam' * 1000)")
    assert r.timed_out and r.truncated and len(r.output) < 20_200
    r = await sb.run_cell("import os\nwhile True:\n    os.write(1, b'x' * 65536)")  # under the capture
    assert r.timed_out
    assert sb.worker._ring_len <= 64 * 1024 + 65536 and len(sb.worker.tail()) <= 2000
    await assert_host_intact(sb, canary)


async def test_exploding_answer_object(sandboxes, canary):
    sb = await sandboxes()
    r = await sb.run_cell(
        "class Evil:\n    def __repr__(self): raise SystemExit('repr bomb')\n"
        "    def __str__(self): return 'x' * 10 ** 8\n"
        "answer['content'] = Evil()\nanswer['ready'] = True"
    )
    assert not r.answer.ready and "too large" in r.answer.error
    assert await sb.lookup_variable("answer") == (False, None)
    await assert_host_intact(sb, canary)


# ---- leaving something behind ---------------------------------------------------------------


@pytest.mark.parametrize("how", ["thread", "fork", "double-fork", "setsid"])
async def test_nothing_survives_close(sandboxes, canary, how):
    sb = await sandboxes(config=FAST.model_copy(update={"seccomp": False}))
    spawn = {
        "thread": "threading.Thread(target=time.sleep, args=(300,)).start()",
        "fork": "if os.fork() == 0:\n    time.sleep(300)",
        "double-fork": "if os.fork() == 0:\n    if os.fork() == 0:\n        time.sleep(300)\n    os._exit(0)",
        "setsid": "if os.fork() == 0:\n    os.setsid()\n    time.sleep(300)",
    }[how]
    r = await sb.run_cell(f"import os, time, threading\n{spawn}\ntime.sleep(0.1)")
    assert r.error is None
    await assert_host_intact(sb, canary)
    uid, pid = sb.worker.uid, sb.worker.pid
    before = pids_of_uid(uid)
    assert len(before) >= (1 if how == "thread" else 2)
    await sb.close()
    assert not await wait_gone([pid, *before]) and pids_of_uid(uid) == []


HOST_SCRIPT = """
import asyncio, sys, tempfile
from rlm_env.sandbox import Sandbox, SandboxConfig, prepare_context
async def main():
    sb = await Sandbox.start(SandboxConfig(seccomp=False), prepare_context("x", store_dir=tempfile.mkdtemp()))
    await sb.run_cell("import os, time\\nfor _ in range(3):\\n    if os.fork() == 0:\\n        os.setsid(); time.sleep(300)")
    print(sb.worker.uid, flush=True)
    await sb.run_cell("while True:\\n    try:\\n        time.sleep(300)\\n    except BaseException:\\n        pass")
asyncio.run(main())
"""


async def test_a_crashed_host_leaves_nothing_behind():
    """The host dies (SIGKILL) mid-cell, never calling close(): the sandbox must end by itself."""
    host = subprocess.Popen([sys.executable, "-c", HOST_SCRIPT], stdout=subprocess.PIPE, text=True)
    try:
        uid = int(host.stdout.readline())
        inside = pids_of_uid(uid)
        assert len(inside) == 4  # the worker and three setsid children
        time.sleep(0.2)
        host.kill()
        host.wait()
        assert not await wait_gone(inside, timeout=5)
        # (zombies may linger: orphans of a dead host are the host's pid 1's to reap)
        assert [p for p in pids_of_uid(uid) if alive(p)] == []
    finally:
        host.kill()
        host.wait()


def test_host_forks_after_everything():
    assert subprocess.run(["/bin/true"]).returncode == 0

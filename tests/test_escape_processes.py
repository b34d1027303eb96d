"""Escape suite, part: processes, signals, privileges and resource bombs.

The same method as tests/test_escape_files.py: each test plays one attack as model-written code
through the real bwrap sandbox and checks both that it failed and that the host is intact.
"""

# ruff: noqa: F811 - pytest fixtures imported from tests.sandbox_helpers are test arguments

from __future__ import annotations

import os
from pathlib import Path

import pytest

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
    else:  # -1 reaches only the sandbox's own processes; its init (bwrap's, uid 0) refuses the worker
        assert (
            r.output == "'still here'\n"
            or "ProcessLookupError" in r.error
            or "PermissionError" in r.error
            or r.worker_restarted
        ), r
    await assert_host_intact(sb, canary)


async def test_host_pids_are_invisible_in_proc(sandboxes, canary):
    sb = await sandboxes()
    r = await sb.run_cell(
        "import os\npids = sorted(int(p) for p in os.listdir('/proc') if p.isdigit())\n"
        f"print(pids, os.getpid(), os.path.exists('/proc/{os.getpid()}'), os.path.exists('/proc/{canary.pid}'))"
    )
    # bwrap's init (pid 1) and the worker (pid 2): nothing else of the host's
    assert r.output == "[1, 2] 2 False False\n", r
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

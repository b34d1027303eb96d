"""Escape suite, part: the host's resources and labels (issue 13).

The same method as tests/test_escape_files.py: each test plays one attack as model-written code
through the real bwrap sandbox and checks that it failed, that the host is intact (process, a
canary, forking, a working sandbox) and, here, the host's event loop stayed responsive, its
memory did not balloon and no process was left behind. Each of these attacks worked before the
hardening: hung the host, outlived it, used memory no limit saw, filled a machine-wide table,
ballooned or stalled the host, or labelled the model's own episode an infrastructure failure.
"""

# ruff: noqa: F811 - pytest fixtures imported from tests.sandbox_helpers are test arguments

from __future__ import annotations

import asyncio
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rlm_env.sandbox import prepare_context
from rlm_env.sandbox.cgroup import _sweep as sweep_stale_cgroups
from rlm_env.sandbox.cgroup import memory_parent, unavailable_reason
from tests.sandbox_helpers import (  # noqa: F401 - the fixtures are used as test arguments
    FAST,
    HostWatch,
    RecordingHandler,
    assert_host_intact,
    assert_no_leaked_processes,
    canary,
    needs_bwrap,
    pids_of_uid,
    sandboxes,
    wait_gone,
)

pytestmark = needs_bwrap

FIND_SOCKET = (
    "import os, stat, struct, json, socket\n"
    "def is_sock(fd):\n"
    "    try: return stat.S_ISSOCK(os.fstat(fd).st_mode)\n"
    "    except OSError: return False\n"
    "SOCK = socket.socket(fileno=os.dup([fd for fd in range(4096) if is_sock(fd)][0]))\n"
    "def frame(obj):\n"
    "    data = obj if isinstance(obj, bytes) else json.dumps(obj).encode()\n"
    "    return struct.pack('>I', len(data)) + data\n"
)


async def _bounded(coro, seconds: float = 30.0):
    """The old host hung on some of these attacks: fail the test instead of hanging it."""
    return await asyncio.wait_for(coro, seconds)


# ---- hangs ----------------------------------------------------------------------------------


async def test_flooding_call_frames_without_reading_replies_is_a_violation(sandboxes, canary):
    handler = RecordingHandler()
    sb = await sandboxes(config=FAST.model_copy(update={"io_timeout_s": 1.0}), handler=handler)
    code = FIND_SOCKET + (
        "import signal, time\nsignal.signal(signal.SIGALRM, signal.SIG_IGN)\n"
        "SOCK.sendall(b''.join(frame({'op': 'call', 'id': i, 'fn': 'llm_query', 'args': {'prompt': 'x'}})"
        " for i in range(6000)))\n"
        "time.sleep(300)"
    )
    async with HostWatch() as watch:
        t0 = time.monotonic()
        r = await _bounded(sb.run_cell(code))
        took = time.monotonic() - t0
    assert r.worker_restarted and r.protocol_violation and "without reading the replies" in r.error, r
    assert took < 5, took
    assert len(handler.calls) <= 10  # bounded outstanding calls: the flood was cut off at once
    watch.check()
    await assert_host_intact(sb, canary)


HOST_SPIN_SCRIPT = """
import asyncio, json, tempfile
from rlm_env.sandbox import Sandbox, SandboxConfig, prepare_context
async def main():
    sb = await Sandbox.start(SandboxConfig(cell_timeout_s=600), prepare_context("x", store_dir=tempfile.mkdtemp()))
    print(json.dumps(sb.pids()), flush=True)
    await sb.run_cell("import collections, itertools\\ncollections.deque(itertools.repeat(1), maxlen=0)")
asyncio.run(main())
"""


async def test_a_worker_that_stops_reading_a_big_reply_is_a_violation(sandboxes, canary):
    """One call whose large reply is never read: the host's write has a deadline too."""
    handler = RecordingHandler()
    sb = await sandboxes(config=FAST.model_copy(update={"io_timeout_s": 1.0}), handler=handler)
    code = FIND_SOCKET + (
        "import signal, time\nsignal.signal(signal.SIGALRM, signal.SIG_IGN)\n"
        "SOCK.sendall(frame({'op': 'call', 'id': 1, 'fn': 'llm_batch', 'args': {'prompts': ['x' * 100_000] * 50}}))\n"
        "time.sleep(300)"
    )
    async with HostWatch() as watch:
        r = await _bounded(sb.run_cell(code))
    assert r.worker_restarted and r.protocol_violation and "stopped reading" in r.error, r
    watch.check()
    await assert_host_intact(sb, canary)


async def test_a_worker_spinning_in_c_dies_with_its_host():
    """The host is killed while the worker holds its GIL in C (no Python watchdog can run)."""
    host = subprocess.Popen([sys.executable, "-c", HOST_SPIN_SCRIPT], stdout=subprocess.PIPE, text=True)
    try:
        pids = json.loads(host.stdout.readline())
        assert len(pids) == 3  # bwrap, its init, the worker
        await asyncio.sleep(0.5)  # the cell is surely spinning now
        host.kill()
        host.wait()
        assert not await wait_gone(pids[1:], timeout=3), "the sandbox outlived its host"
        base = memory_parent()[0]
        if base is not None:  # the dead host's cgroup is swept by the next host to start one
            sweep_stale_cgroups(base)
            assert not list(base.glob(f"rlm-sb-{host.pid}-*"))
    finally:
        host.kill()
        host.wait()


# ---- memory outside the limits, machine-wide tables --------------------------------------------

_CTYPES = "import ctypes, os\nlibc = ctypes.CDLL(None, use_errno=True)\n"
DENIED_SYSCALLS = {
    "memfd_create": "r = libc.syscall(319, b'x', 0)",
    "memfd_secret": "r = libc.syscall(447, 0)",
    "shmget": "r = libc.shmget(0, 60 << 20, 0o1600)",
    "msgget": "r = libc.msgget(0, 0o1600)",
    "semget": "r = libc.semget(0, 1, 0o1600)",
    "mq_open": "r = libc.syscall(240, b'q', 0o102, 0o600, None)",
    "io_setup": "ctx = ctypes.c_ulong(0)\nr = libc.syscall(206, 65536, ctypes.byref(ctx))",
    "io_uring_setup": "p = ctypes.create_string_buffer(120)\nr = libc.syscall(425, 8, p)",
}


@pytest.mark.parametrize("name", sorted(DENIED_SYSCALLS))
async def test_memory_and_table_syscalls_are_denied(sandboxes, canary, name):
    aio_before = Path("/proc/sys/fs/aio-nr").read_text()
    sb = await sandboxes()
    r = await sb.run_cell(_CTYPES + DENIED_SYSCALLS[name] + "\nprint(r, ctypes.get_errno())")
    assert r.output == "-1 1\n", r  # EPERM from the seccomp filter
    assert Path("/proc/sys/fs/aio-nr").read_text() == aio_before
    await assert_host_intact(sb, canary)


@pytest.mark.parametrize(
    "code",
    [
        "import os; os.memfd_create('x')",
        "from multiprocessing import shared_memory; shared_memory.SharedMemory(create=True, size=60 << 20)",
        "import os; os.openpty()",
        "open('/dev/ptmx', 'rb')",
        "open('/dev/pts/ptmx', 'rb')",
    ],
    ids=["memfd", "posix-shm", "openpty", "ptmx", "pts-ptmx"],
)
async def test_python_level_memory_and_pty_attacks_fail(sandboxes, canary, code):
    sb = await sandboxes()
    r = await sb.run_cell(code)
    assert r.error is not None and not r.worker_restarted, r
    await assert_host_intact(sb, canary)


needs_cgroup = pytest.mark.skipif(
    bool(unavailable_reason()), reason=f"no memory cgroup: {unavailable_reason()}"
)


@needs_cgroup
@pytest.mark.slow
async def test_many_empty_files_in_tmp_are_bounded_by_the_cgroup(sandboxes, canary):
    """Inodes and dentries are kernel memory (no RLIMIT sees it): the sandbox's cgroup does."""
    cfg = FAST.model_copy(
        update={"memory_limit_mb": 256, "tmp_size_mb": 1, "cgroup_headroom_mb": 16, "cell_timeout_s": 60}
    )
    sb = await sandboxes(config=cfg)
    cgroup = sb.worker.cgroup
    assert cgroup is not None
    r = await sb.run_cell(
        "import os\nn, name = 0, 'f' * 200\n"
        "try:\n"
        "    while n < 400_000:\n"
        "        os.close(os.open(f'/tmp/{n}{name}', os.O_CREAT | os.O_WRONLY, 0o600))\n"
        "        n += 1\n"
        "except OSError as e:\n"
        "    print(n, e)"
    )
    # the cgroup's limit (256 + 1 + 16 MB) is reached long before 400k files (~500 MB of inodes)
    assert r.worker_restarted and r.exit_signal == 9 and r.oom_killed and "memory limit" in r.error, r
    assert not cgroup.path.exists()  # removed with its worker
    await assert_host_intact(sb, canary)


async def test_each_sandbox_reports_its_cgroup_or_says_why_not(sandboxes):
    sb = await sandboxes()
    why = unavailable_reason()
    if why:
        assert sb.worker.cgroup is None and "memory cgroup" in (sb.mode_warning or "")
        assert sb.layers["memory_cgroup"] is False
    else:
        cg = sb.worker.cgroup
        assert cg is not None and set(sb.pids()[1:]) <= set(cg.pids()) and sb.layers["memory_cgroup"]
        await sb.close()
        assert not cg.path.exists()


# ---- the host's memory and event loop ---------------------------------------------------------


async def test_a_64_mb_frame_of_empty_objects_does_not_balloon_the_host(sandboxes, canary):
    sb = await sandboxes()
    code = FIND_SOCKET + (
        'body = b\'{"op": "call", "id": 1, "fn": "llm_batch", "args": {"prompts": [\''
        " + b'{}, ' * 16_000_000 + b'{}]}}'\n"
        "SOCK.sendall(frame(body))\nimport time\ntime.sleep(60)"
    )
    async with HostWatch() as watch:
        r = await _bounded(sb.run_cell(code))
    assert r.worker_restarted and r.protocol_violation and "JSON items" in r.error, r
    watch.check(
        max_lag_s=1.0, max_growth_mb=100
    )  # (the old host: 4 s and more; 1 s leaves room for a busy CI)
    await assert_host_intact(sb, canary)


async def _bystander_latency(sb, stop: asyncio.Event) -> float:
    worst = 0.0
    while not stop.is_set():
        t0 = time.monotonic()
        r = await sb.run_cell("1")
        assert r.output == "1\n", r
        worst = max(worst, time.monotonic() - t0)
        await asyncio.sleep(0.01)
    return worst


async def test_huge_llm_batch_frames_do_not_stall_a_bystander(sandboxes, canary):
    handler = RecordingHandler()
    attacker, bystander = await sandboxes(handler=handler), await sandboxes()
    code = FIND_SOCKET + (
        'body = b\'{"op": "call", "id": 1, "fn": "llm_batch", "args": {"prompts": [\''
        " + b'\"\",' * 20_000_000 + b'\"\"]}}'\n"
        "for _ in range(6):\n    SOCK.sendall(frame(body))\n"
    )
    stop = asyncio.Event()
    async with HostWatch() as watch:
        lat = asyncio.create_task(_bystander_latency(bystander, stop))
        r = await _bounded(attacker.run_cell(code))
        stop.set()
        worst = await lat
    assert r.protocol_violation and "JSON items" in r.error and handler.calls == [], r
    assert worst < 1.0, f"a bystander's 1 ms cell took {worst:.2f} s"
    watch.check(
        max_lag_s=1.0, max_growth_mb=100
    )  # (the old host: 4 s and more; 1 s leaves room for a busy CI)
    await assert_host_intact(attacker, canary)


async def test_honest_frames_full_of_commas_and_brackets_pass_the_item_bound(sandboxes):
    """The bound counts raw `,` `[` `{`; the honest worker escapes them inside strings, so a CSV
    prompt or a big answer of many small items is never mistaken for a flood."""
    handler = RecordingHandler()
    sb = await sandboxes(handler=handler)
    r = await sb.run_cell("r = llm_batch(['a,[b],{c}' * 100_000] * 3)\nprint(len(r), r[0][:30])")
    assert r.output == "3 llm_batch:a,[b],{c}a,[b],{c}a,\n" and not r.worker_restarted, r
    assert handler.calls[0][1]["prompts"][0] == "a,[b],{c}" * 100_000
    r = await sb.run_cell("FINAL([0] * 300_000)")  # 900 KB of JSON, 300,000 items
    assert r.answer.ready and r.answer.content == [0] * 300_000 and not r.worker_restarted, r
    r = await sb.run_cell("z = [[], {}] * 120_000\ns = 'a,[b],{c}' * 100_000")  # 480,000 items; 900 KB
    assert await sb.lookup_variable("z") == (True, [[], {}] * 120_000)
    assert await sb.lookup_variable("s") == (True, "a,[b],{c}" * 100_000)


class BudgetHandler(RecordingHandler):
    """A handler that says how many sub-calls it would still accept."""

    def sub_calls_left(self) -> int:
        return 10


async def test_batches_over_the_limits_are_refused_before_the_handler(sandboxes, canary):
    handler = BudgetHandler()
    sb = await sandboxes(handler=handler, config=FAST.model_copy(update={"max_batch_prompts": 4096}))
    forged = "llm_query.__globals__['_call']('llm_batch', {{'prompts': [''] * {n}, 'sampling': {{}}}})"
    r = await sb.run_cell(forged.format(n=100_000))  # past the stub's check: over max_batch_prompts
    assert "SubCallError" in r.error and "at most 4,096 per call" in r.error and not r.worker_restarted, r
    r = await sb.run_cell("llm_batch([''] * 5000)")  # the stub refuses it without a frame
    assert "SubCallError" in r.error and "at most 4,096" in r.error, r
    r = await sb.run_cell("llm_batch(['a'] * 11)")  # over the handler's budget: refused on the count
    assert "SubCallError" in r.error and "11 prompts asked for, 10 sub-calls left" in r.error, r
    assert handler.calls == []
    r = await sb.run_cell("llm_batch(['a'] * 10)")
    assert r.output == "['llm_batch:a', 'llm_batch:a', 'llm_batch:a', 'llm_batch:a', 'llm_batch:a', " \
        "'llm_batch:a', 'llm_batch:a', 'llm_batch:a', 'llm_batch:a', 'llm_batch:a']\n", r  # fmt: skip
    await assert_host_intact(sb, canary)


# ---- forged labels ---------------------------------------------------------------------------

PATCH_RESULT = (
    "import json, struct\n_g = llm_query.__globals__\n_orig = _g['run_cell']\n"
    "def _forged(code, _orig=_orig):\n    r = _orig(code)\n    r.update(PATCH)\n    return r\n"
    "_g['run_cell'] = _forged\n"
    "class _Loose:\n"  # an encoder that lets NaN and Infinity through, as a forger would
    "    @staticmethod\n"
    "    def encode(m):\n        d = json.dumps(m).encode()\n        return struct.pack('>I', len(d)) + d\n"
    "_g['CHAN'].encode = _Loose.encode\n"
)
FORGED = {
    "duration-10**400": "{'duration_s': 10**400}",
    "duration-nan": "{'duration_s': float('nan')}",
    "duration-inf": "{'duration_s': float('inf')}",
    "duration-negative": "{'duration_s': -1.0}",
    "duration-str": "{'duration_s': '1'}",
    "chars-cut-negative": "{'chars_cut': -5}",
    "truncated-str": "{'truncated': 'yes'}",
    "output-int": "{'output': 123}",
    "output-huge": "{'output': 'x' * 5_000_000}",
    "unknown-key": "{'infra_failure': True}",
    "answer-over-cap": "{'answer': {'ready': True, 'content': 'x' * 3_000_000, 'via': 'FINAL', 'error': None}}",
    "answer-bad-via": "{'answer': {'ready': True, 'content': 'x', 'via': 'infra', 'error': None}}",
}


@pytest.mark.parametrize("patch", list(FORGED.values()), ids=list(FORGED))
async def test_forged_result_fields_are_protocol_violations(sandboxes, canary, patch):
    sb = await sandboxes()
    r = await sb.run_cell(f"PATCH = {patch}\n" + PATCH_RESULT)
    assert r.error is None, r
    r = await _bounded(sb.run_cell("print('hello')"))  # this reply is the forged one
    assert r.worker_restarted and r.protocol_violation and "ProtocolViolation" in r.error, r
    assert not sb.get_answer().ready
    await assert_host_intact(sb, canary)


@pytest.mark.parametrize(
    ("size", "why"), [(3_000_000, "the cap is 1,000,000 bytes"), (52_000_000, "'lookup' frame (limit")]
)
async def test_a_forged_lookup_cannot_pass_the_answer_cap(sandboxes, canary, size, why):
    """A prose FINAL_VAR reads the variable with `lookup`: a patched worker once returned 52 MB."""
    sb = await sandboxes()
    r = await sb.run_cell(
        "x = 1\n_g = llm_query.__globals__\n"
        f"_g['lookup'] = lambda name: {{'op': 'lookup', 'found': True, 'value': 'y' * {size}, 'error': None}}"
    )
    assert r.error is None, r
    async with HostWatch() as watch:
        found, value = await _bounded(sb.lookup_variable("x"))
    assert (found, value) == (False, None)
    watch.check(max_growth_mb=60)  # 3 MB is read, then refused; 52 MB is refused by its header
    r = await sb.run_cell("print('after')")
    assert r.worker_restarted and "broke the host protocol" in r.output and why in r.output, r
    await assert_host_intact(sb, canary)


# ---- leaks -----------------------------------------------------------------------------------


async def test_one_off_contexts_are_removed_when_their_sandbox_closes(sandboxes, tmp_path):
    store = tmp_path / "store"
    kept, child = (
        prepare_context("a task's context", store_dir=store),
        prepare_context("a prompt", store_dir=store),
    )
    a, b = await sandboxes(context=kept), await sandboxes(context=child)
    c = await sandboxes(context=child)
    b.discard_context_on_close = c.discard_context_on_close = True
    await b.close()
    assert child.path.exists()  # c still uses it
    await c.close()
    assert not child.path.exists()
    await a.close()
    assert kept.path.exists()  # not one-off: shared by later episodes


async def test_stale_context_files_are_swept(tmp_path):
    from rlm_env.sandbox.context_gc import sweep_stale

    store = tmp_path / "store"
    old, fresh = prepare_context("old", store_dir=store), prepare_context("fresh", store_dir=store)
    os.utime(old.path, (time.time() - 10 * 3600,) * 2)
    assert sweep_stale(store) == 1
    assert not old.path.exists() and fresh.path.exists()


async def test_terminal_escapes_reach_play_escaped(tmp_path):
    from rlm_env.episode.config import config_from_dict
    from rlm_env.play import play
    from rlm_env.tasks.base import Task
    from tests.fakes import UpperCaseSubModel

    config = config_from_dict({"sandbox": {"mode": "bwrap", "cell_timeout_s": 5}})
    stdin = io.StringIO("```repl\nprint('\\x1b]0;owned\\x07\\x1b[2J' + 'ok')\n```\n---\nFINAL(done)\n")
    out = io.StringIO()
    task = Task(id="esc", context="c", question="?")
    summary = await play(task, config, UpperCaseSubModel(), stdin, out)
    text = out.getvalue()
    assert "\x1b" not in text and "\x07" not in text
    assert "\\x1b]0;owned\\x07\\x1b[2Jok" in text
    assert summary["flags"]["infra_failure"] is False
    assert_no_leaked_processes()


async def test_play_has_a_hard_wall_clock_kill():
    """An operator (or a script) that never answers cannot hold `play` forever."""
    from rlm_env.episode.config import config_from_dict
    from rlm_env.play import play
    from rlm_env.tasks.base import Task
    from tests.fakes import UpperCaseSubModel

    read_end, write_end = os.pipe()
    stdin = os.fdopen(read_end, "r")
    try:
        config = config_from_dict({"sandbox": {"mode": "bwrap"}})
        t0 = time.monotonic()
        summary = await _bounded(
            play(
                Task(id="idle", context="c", question="?"),
                config,
                UpperCaseSubModel(),
                stdin,
                io.StringIO(),
                1.0,
            )
        )
        assert time.monotonic() - t0 < 10
        assert summary["stop_reason"] == "wall_clock" and summary["flags"]["infra_failure"] is False
    finally:
        os.close(write_end)  # the reader thread sees EOF and ends
    assert_no_leaked_processes()


# ---- the soak --------------------------------------------------------------------------------


@pytest.mark.slow
async def test_a_soak_of_hostile_episodes_ends_on_time_with_nothing_left_behind():
    """32 concurrent episodes, each opening with one attack of the rotating mix (figure 8)."""
    from rlm_env.bench.hardening_figures import HOSTILE, soak

    raw = await asyncio.wait_for(soak(32), timeout=120)
    assert raw["wall_s"] < 60, raw
    assert raw["leaked"] == {"processes": 0, "cgroups": 0, "scratch_dirs": 0, "sysv_shm": 0}, raw
    assert raw["infra_failures"] == [] and raw["excluded_from_training"] == [], raw
    assert set(raw["labels"]) == set(HOSTILE)
    assert all(label == "answer/confirmed" for labels in raw["labels"].values() for label in labels), raw
    assert raw["violations"] >= 16  # 4 of each frame attack, and the forged lookups
    assert raw["host_peak_growth_mb"] < 300 and raw["worst_bystander_cell_s"] < 1.0, raw
    assert_no_leaked_processes()

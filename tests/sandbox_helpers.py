"""Shared fixtures and checks for the sandbox tests (test_sandbox*.py, test_escape*.py).

Import the fixtures by name into a test module (`from tests.sandbox_helpers import sandboxes`).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from rlm_env.sandbox import PreparedContext, Sandbox, SandboxConfig, prepare_context
from rlm_env.sandbox.launch import probe_bwrap
from rlm_env.sandbox.process import pids_of_uid

HAVE_BWRAP = probe_bwrap()[0]
needs_bwrap = pytest.mark.skipif(not HAVE_BWRAP, reason="bubblewrap is not available on this machine")

FAST = SandboxConfig(mode="bwrap" if HAVE_BWRAP else "rlimit", cell_timeout_s=2.0, kill_grace_s=1.0)
"""Short time limits so timeout tests stay quick."""


class RecordingHandler:
    """A fake sub-call handler: records every request; echoes, or fails on demand."""

    def __init__(self, fail: Exception | None = None, delay: float = 0.0):
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.fail, self.delay = fail, delay

    async def __call__(self, fn: str, args: dict[str, Any]) -> Any:
        self.calls.append((fn, args))
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.fail is not None:
            raise self.fail
        if fn == "llm_batch":
            return [f"{fn}:{p}" for p in args["prompts"]]
        return f"{fn}:{args['prompt']}"


@pytest_asyncio.fixture
async def sandboxes(tmp_path: Path):
    """`await start(context="...", config=FAST, handler=None)`; every sandbox is closed afterwards."""
    opened: list[Sandbox] = []

    async def start(
        context: Any = "the context", config: SandboxConfig = FAST, handler: Any = None
    ) -> Sandbox:
        prepared = (
            context
            if isinstance(context, PreparedContext)
            else prepare_context(context, store_dir=tmp_path / "store")
        )
        sb = await Sandbox.start(config, prepared, handler if handler is not None else RecordingHandler())
        opened.append(sb)
        return sb

    yield start
    for sb in opened:
        await sb.close()


def host_can_spawn() -> bool:
    """The host can still fork and exec a program."""
    return subprocess.run(["/bin/true"], timeout=10).returncode == 0


async def assert_host_intact(sb: Sandbox, canary: subprocess.Popen | None = None) -> None:
    """The host process and a canary process are alive, the host forks, and the sandbox answers."""
    os.kill(os.getpid(), 0)
    assert host_can_spawn()
    if canary is not None:
        assert canary.poll() is None, "the canary host process was killed"
    result = await sb.run_cell("21 * 2")
    assert result.output.strip().endswith("42"), result


@pytest.fixture
def canary():
    """A host process the sandbox must not be able to touch (its pid is given to attacks)."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    yield proc
    proc.kill()
    proc.wait()


def descendants(pid: int) -> set[int]:
    """Host pids below `pid` (a /proc scan)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
                ppid = int(stat.rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    out, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in out:
                out.add(child)
                todo.append(child)
    return out


def alive(pid: int) -> bool:
    """Running (not a zombie) on the host."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


async def wait_gone(pids: set[int] | list[int], timeout: float = 5.0) -> set[int]:
    """Poll until none of `pids` runs; returns those still running at the deadline."""
    deadline = asyncio.get_running_loop().time() + timeout
    left = {p for p in pids if alive(p)}
    while left and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.05)
        left = {p for p in left if alive(p)}
    return left


def rss_mb(field: str = "VmRSS") -> float:
    """This process's resident memory (or its peak, "VmHWM") in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return 0.0


class HostWatch:
    """Watches the host while an attack runs: event-loop lag, peak memory, leaked processes.

    `async with HostWatch() as w:` ... then `w.check(max_lag_s=..., max_growth_mb=...)`. The lag
    is how late a 10 ms tick of the host's event loop ever ran; the peak is VmHWM (reset at the
    start, so it is this attack's peak), compared with the resident memory at the start."""

    def __init__(self) -> None:
        self.max_lag_s = 0.0
        self._task: asyncio.Task | None = None

    async def _tick(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            t0 = loop.time()
            await asyncio.sleep(0.01)
            self.max_lag_s = max(self.max_lag_s, loop.time() - t0 - 0.01)

    async def __aenter__(self) -> HostWatch:
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
        self.start_mb = rss_mb()
        self.before = descendants(os.getpid())
        self._task = asyncio.create_task(self._tick())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self.peak_growth_mb = rss_mb("VmHWM") - self.start_mb

    def check(self, max_lag_s: float = 1.0, max_growth_mb: float = 200.0) -> None:
        assert self.max_lag_s < max_lag_s, f"the host's event loop stalled for {self.max_lag_s:.2f} s"
        assert self.peak_growth_mb < max_growth_mb, f"host memory peaked {self.peak_growth_mb:.0f} MB higher"


SANDBOX_MARKERS = ("bwrap", "rlm_worker", "/opt/rlm/", "rlm_env")
"""Command-line marks of the processes a sandbox or an episode host starts. Session-wide test
fixtures (the shared Ray/vLLM engine, an OpenAI server) are descendants too, by design."""


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def assert_no_leaked_processes(allowed: set[int] = frozenset()) -> None:  # type: ignore[assignment]
    """No sandbox or episode-host process below the test process but `allowed` (e.g. the
    canary, live sandboxes)."""
    left = {
        p
        for p in descendants(os.getpid())
        if alive(p) and any(mark in _cmdline(p) for mark in SANDBOX_MARKERS)
    } - set(allowed)
    assert not left, f"leaked processes: {sorted(left)}: {[_cmdline(p)[:80] for p in sorted(left)]}"


__all__ = [
    "HostWatch",
    "assert_no_leaked_processes",
    "rss_mb",
    "FAST",
    "HAVE_BWRAP",
    "RecordingHandler",
    "alive",
    "assert_host_intact",
    "canary",
    "descendants",
    "host_can_spawn",
    "needs_bwrap",
    "pids_of_uid",
    "sandboxes",
    "wait_gone",
]

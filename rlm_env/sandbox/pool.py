"""A warm pool: workers started ahead of time, waiting for a context.

Starting a worker (bwrap, Python, the uid drop, the seccomp filter) is most of a cold start;
handing an idle one its context descriptor is a single frame. `SandboxPool(config, size)` keeps
up to `size` idle workers; `acquire(context, handler)` takes one (or cold-starts one if none
is idle), gives it the context and returns a ready `Sandbox`, then refills in the background.
Replacements start `refill_delay_s` after an acquire, off the new episode's first cells.
An idle worker that died while waiting is skipped. A restart after a crash inside an episode
starts a fresh worker directly (it must not wait on the pool).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from rlm_env.sandbox.config import SandboxConfig
from rlm_env.sandbox.context import PreparedContext
from rlm_env.sandbox.host import Handler, Sandbox
from rlm_env.sandbox.launch import resolve_mode
from rlm_env.sandbox.process import SandboxStartError, WorkerProcess

log = logging.getLogger(__name__)


class SandboxPool:
    """Pre-started workers for fast episode starts; an async context manager."""

    def __init__(self, config: SandboxConfig | None = None, size: int = 4, refill_delay_s: float = 0.25):
        if size < 0:
            raise ValueError("size must be >= 0")
        self.config = config or SandboxConfig()
        self.size = size
        self.refill_delay_s = refill_delay_s
        """Wait this long after an acquire before starting replacements, so the fork and the new
        Python's start-up do not compete with the just-acquired sandbox's first cells."""
        self.mode, self.mode_warning = resolve_mode(self.config)
        self._idle: list[WorkerProcess] = []
        self._starting = 0
        self._tasks: set[asyncio.Task] = set()
        self._closed = False

    @property
    def idle(self) -> int:
        """Workers waiting right now."""
        return len(self._idle)

    def _refill(self) -> None:
        while not self._closed and len(self._idle) + self._starting < self.size:
            self._starting += 1
            task = asyncio.create_task(self._start_one())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _start_one(self) -> None:
        try:
            worker = await WorkerProcess.spawn(self.config, self.mode)
        except SandboxStartError as e:
            log.warning("sandbox pool could not pre-start a worker: %s", e)
            return
        finally:
            self._starting -= 1
        if self._closed:
            await worker.kill()
        else:
            self._idle.append(worker)

    async def fill(self) -> None:
        """Start workers until `size` are idle, and wait for them."""
        self._refill()
        while self._starting and not self._closed:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def acquire(
        self, context: PreparedContext, handler: Handler | None = None, more_contexts: tuple = ()
    ) -> Sandbox:
        """A ready sandbox on `context` (and `more_contexts`): a pre-started worker if one is
        idle, else a cold one."""
        if self._closed:
            raise RuntimeError("this pool is closed")
        sandbox = Sandbox(self.config, context, handler, self.mode, self.mode_warning, more_contexts)
        while self._idle:
            worker = self._idle.pop()
            if worker.returncode is not None:
                await worker.kill()
                continue
            try:
                await sandbox._attach(worker)
            except SandboxStartError as e:
                log.warning("an idle sandbox worker failed to take its context: %s", e)
                continue
            asyncio.get_running_loop().call_later(self.refill_delay_s, self._refill)
            return sandbox
        self._refill()
        await sandbox._attach(await WorkerProcess.spawn(self.config, self.mode))
        return sandbox

    async def close(self) -> None:
        """Stop refilling and kill every idle worker (sandboxes already handed out are the caller's)."""
        self._closed = True
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        idle, self._idle = self._idle, []
        await asyncio.gather(*(w.kill() for w in idle), return_exceptions=True)

    async def __aenter__(self) -> SandboxPool:
        self._refill()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

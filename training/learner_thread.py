"""The learner's own thread: every optimizer step and weight export of a run happens on it.

The trainer keeps the learner off the event loop, so rollouts launched ahead of it
(`rollout.max_policy_lag > 0`) keep running while it computes (torch releases the GIL in its
kernels). Why one dedicated thread rather than asyncio's shared default executor: glibc gives
each thread its own malloc arena, and an arena keeps the chunks a step freed (activations of
a few MB each, GBs in all at 1-4k tokens) mapped for its next user. On the shared executor,
whose threads the rollouts also use, successive steps landed on different threads and the
process grew by about one step's peak per thread (an allocator model of a step, 0.9 GB of
4-8 MB tensors, 5 steps: 3.0 GB of RSS on 3 executor threads, 1.3 GB on one thread, 0.2 GB after
`malloc_trim`). After each call the thread hands the freed pages back to the OS (`malloc_trim`,
glibc only), so
the learner's footprint between steps is its live tensors, not its last peak: on a machine that
also runs the engines, that is room for them.

Guaranteed: calls run one at a time, in submission order, on the same thread. Not guaranteed:
`malloc_trim` exists (other C libraries: a no-op).
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import functools
from concurrent.futures import ThreadPoolExecutor
from typing import Any


@functools.cache
def _malloc_trim() -> Any:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc.malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None


def release_freed_memory() -> None:
    """Return the pages of freed heap chunks, in every malloc arena, to the OS (glibc)."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


class LearnerThread:
    """One worker thread for a run's learner; `await run(fn, *args)` from the event loop."""

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="learner")

    def _call(self, fn: Any, *args: Any) -> Any:
        try:
            return fn(*args)
        finally:
            release_freed_memory()

    async def run(self, fn: Any, *args: Any) -> Any:
        """`fn(*args)` on the learner thread, awaited without blocking the event loop."""
        return await asyncio.get_running_loop().run_in_executor(self._pool, self._call, fn, *args)

    def close(self) -> None:
        """No new calls; one still running finishes on its own (the loop does not wait)."""
        self._pool.shutdown(wait=False, cancel_futures=True)

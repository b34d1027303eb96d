"""`rollouts(...)`: finished episodes as an async iterator, for any trainer.

The smallest adapter: give it tasks, a root model (a spec such as "default" or a started
`ModelClient`), an episode config and a concurrency bound; it runs one `Episode` per task (or
`repeats` per task, a GRPO group) on warm sandboxes and yields each `EpisodeRecord` the moment
it finishes, scored by the rubric. These are exactly the records `rlm-env eval` writes and
`training/` consumes: root transcript as token ids with a loss mask and logprobs, every sub-call,
every cell, flags separating infrastructure failures from the model's own. With root-history
compaction on (`EpisodeConfig.compaction`), a record holds one root sample per segment
(`record.root_samples()`, all with the episode's reward; `training.samples_from_records` turns
each into a sample with the episode's advantage).

    async for record in rlm_env.rollouts(make_tasks("niah", ["8k"], 8), "default", concurrency=4):
        if record.training_exclusion() is None:
            buffer.append(record)

What it guarantees: tasks are pulled lazily (an endless generator is fine) and at most
`concurrency` episodes are in flight; every yielded record is finished (sandbox closed, answer
settled, rewards filled); an episode that raises is not swallowed (the exception propagates and
the other in-flight episodes are cancelled and their sandboxes closed). Engines it built from a
spec are closed when the iterator ends; clients passed in stay open (the caller owns them).

What it does not do: order (records come in finishing order; `record.task["id"]` and the
`episode_id`, "<task id>#<repeat>" when `repeats` > 1, say which is which), retry, or write to
disk (wrap it with `TrajectoryWriter` for that).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Iterable
from typing import Any

from rlm_env.episode import Episode, EpisodeConfig, EpisodeRecord
from rlm_env.episode.config import config_from_dict
from rlm_env.models.base import ModelClient
from rlm_env.tasks.base import Task


def resolve_config(config: EpisodeConfig | dict[str, Any] | None) -> EpisodeConfig:
    """An EpisodeConfig from a config, a plain (nested) dict, or None (the defaults)."""
    if config is None:
        return EpisodeConfig()
    if isinstance(config, EpisodeConfig):
        return config
    return config_from_dict(dict(config))


def resolve_model(model: str | ModelClient, *, role: str = "root", engine: Any = None) -> tuple[Any, bool]:
    """(client, owned): a started client for a spec (owned: we close it) or the client given."""
    if isinstance(model, str):
        from rlm_env.models import EngineConfig, build_model

        config = engine if engine is None or isinstance(engine, EngineConfig) else EngineConfig(**engine)
        return build_model(model, role=role, config=config), True  # type: ignore[arg-type]
    return model, False


def training_exclusion(record: EpisodeRecord) -> str | None:
    """None when a trainer should train on this episode, else the reason: exactly
    `EpisodeRecord.training_exclusion()`, the one rule (kept here as a function for callers
    that map over records)."""
    return record.training_exclusion()


def episode_id(task: Task, repeat: int = 0, repeats: int = 1) -> str:
    """A file- and URL-safe id: the task id, with "#<k>" for the k-th repeat of a group."""
    base = re.sub(r"[^A-Za-z0-9_.:-]+", "_", task.id)
    return f"{base}#{repeat}" if repeats > 1 else base


async def rollouts(
    tasks: Iterable[Task],
    model: str | ModelClient = "default",
    *,
    sub_model: str | ModelClient | None = None,
    config: EpisodeConfig | dict[str, Any] | None = None,
    rubric: Any | None = None,
    concurrency: int = 4,
    repeats: int = 1,
    engine: Any = None,
    sandbox_pool_size: int | None = None,
) -> AsyncIterator[EpisodeRecord]:
    """Run episodes and yield finished, scored records as they complete (see module docstring).

    `model`/`sub_model`: specs for `rlm_env.models.build_model` or started clients; the sub-model
    defaults to the root's engine. `rubric`: a `rewards.Rubric` (default: `Rubric()`); pass
    False to leave records unscored. `engine`: EngineConfig (or its fields) for specs.
    """
    from rlm_env.sandbox import SandboxPool

    if concurrency < 1 or repeats < 1:
        raise ValueError("concurrency and repeats must be at least 1")
    episode_config = resolve_config(config)
    if rubric is None:
        from rewards import Rubric

        rubric = Rubric()
    elif rubric is False:
        rubric = None
    root, owns_root = resolve_model(model, role="root", engine=engine)
    if sub_model is None or sub_model is model:
        sub, owns_sub = root, False
    else:
        sub, owns_sub = resolve_model(sub_model, role="sub", engine=engine)
    pool = SandboxPool(episode_config.sandbox, size=min(sandbox_pool_size or concurrency, 8))

    async def one(task: Task, repeat: int) -> EpisodeRecord:
        episode = Episode(
            task,
            episode_config,
            root,
            sub,
            episode_id=episode_id(task, repeat, repeats),
            rubric=rubric,
            sandbox_pool=pool,
        )
        try:
            return await episode.run()
        finally:
            await episode.close()

    def jobs() -> Iterable[tuple[Task, int]]:
        for task in tasks:
            for repeat in range(repeats):
                yield task, repeat

    pending: set[asyncio.Task[EpisodeRecord]] = set()
    source = iter(jobs())
    exhausted = False
    try:
        while True:
            while not exhausted and len(pending) < concurrency:
                job = next(source, None)
                if job is None:
                    exhausted = True
                    break
                pending.add(asyncio.ensure_future(one(*job)))
            if not pending:
                break
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for finished in done:
                yield finished.result()
    finally:
        for job in pending:
            job.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
        await pool.close()
        if owns_sub:
            await sub.close()
        if owns_root:
            await root.close()


async def collect(
    tasks: Iterable[Task], model: str | ModelClient = "default", **kwargs: Any
) -> list[EpisodeRecord]:
    """All records of `rollouts(...)` as a list (finishing order)."""
    return [record async for record in rollouts(tasks, model, **kwargs)]

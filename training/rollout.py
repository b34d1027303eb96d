"""Rollouts: the episode loop of `rlm-env eval`, run many at once on the engines, for training.

This is `rlm_env.evaluate.run_eval`'s machinery (an `Episode` per task, a bound on episodes in
flight, one warm `SandboxPool`, records appended and fsync'd to a JSONL file as they finish,
finished episodes reused on resume) with three differences a trainer needs:

- one task may run several times (a GRPO group: G episodes on the *same* `Task`, so the same
  seed and the same context), each under its own episode id `<task id>#<step>.<k>`;
- the pool lives for the whole run, not one call (a sandbox cold start per step is waste);
- scoring is a separate, timed phase (`score`), so a step's wall time splits into rollout,
  scoring, learner and sync.

Nothing here knows about losses or weights.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rlm_env.episode import Episode, EpisodeConfig, EpisodeRecord, TrajectoryWriter, read_records
from rlm_env.evaluate import episode_id_for
from rlm_env.sandbox import SandboxPool
from rlm_env.tasks import make_tasks
from rlm_env.tasks.base import Task
from training.config import RolloutConfig


@dataclass
class Job:
    task: Task
    episode_id: str


def step_tasks(config: RolloutConfig, step: int) -> list[Task]:
    """The distinct tasks of rollout step `step` (1-based): fresh seeds every step, lengths cycled."""
    tasks = []
    for i in range(config.tasks_per_step):
        seed = config.seed + (step - 1) * config.tasks_per_step + i
        length = config.lengths[i % len(config.lengths)]
        task = make_tasks(config.task, [length], 1, split=config.split, seed=seed)[0]
        task.metadata.setdefault("length_label", length)
        tasks.append(task)
    return tasks


def group_jobs(tasks: list[Task], copies: int, step: int) -> list[Job]:
    """`copies` episodes of each task (a GRPO group, or RFT's K samples)."""
    return [Job(t, f"{episode_id_for(t)}#{step}.{k}") for t in tasks for k in range(copies)]


class Rollouts:
    """Runs jobs concurrently on the given models; call `close()` at the end of the run."""

    def __init__(
        self,
        episode_config: EpisodeConfig,
        root_model: Any,
        sub_model: Any,
        *,
        concurrency: int,
    ):
        self.episode_config = episode_config
        self.root_model = root_model
        self.sub_model = sub_model
        self.concurrency = concurrency
        self.pool = SandboxPool(episode_config.sandbox, size=min(concurrency, 8))

    async def run(
        self,
        jobs: list[Job],
        path: str | Path | None = None,
        on_done: Callable[[EpisodeRecord], None] | None = None,
    ) -> list[EpisodeRecord]:
        """Run every job not already in `path` (records are appended there as they finish);
        return the records of all jobs, in job order. Unscored: see `score`."""
        done: dict[str, EpisodeRecord] = {}
        if path is not None and Path(path).exists():
            done = {r.episode_id: r for r in read_records(path)}
        todo = [j for j in jobs if j.episode_id not in done]
        semaphore = asyncio.Semaphore(self.concurrency)
        writer = TrajectoryWriter(path) if path is not None else None

        async def one(job: Job) -> EpisodeRecord:
            async with semaphore:
                episode = Episode(
                    job.task,
                    self.episode_config,
                    self.root_model,
                    self.sub_model,
                    episode_id=job.episode_id,
                    sandbox_pool=self.pool,
                )
                try:
                    return await episode.run()
                finally:
                    await episode.close()

        try:
            for future in asyncio.as_completed([asyncio.ensure_future(one(j)) for j in todo]):
                record = await future
                if writer is not None:
                    writer.write(record)
                done[record.episode_id] = record
                if on_done is not None:
                    on_done(record)
        finally:
            if writer is not None:
                writer.close()
        return [done[j.episode_id] for j in jobs]

    async def close(self) -> None:
        await self.pool.close()


async def score(records: list[EpisodeRecord], jobs: list[Job], rubric: Any, judge: Any) -> float:
    """Score every unscored record with the rubric (concurrently); returns the seconds taken."""
    started = time.perf_counter()
    tasks = {j.episode_id: j.task for j in jobs}
    await asyncio.gather(
        *(rubric.score(r, tasks[r.episode_id], judge=judge) for r in records if not r.rewards)
    )
    return time.perf_counter() - started


def write_records(path: str | Path, records: list[EpisodeRecord]) -> None:
    """Rewrite `path` with the scored records (scores are added after the rollout wrote them)."""
    path = Path(path)
    tmp = path.with_suffix(".tmp")
    with TrajectoryWriter(tmp) as w:
        for r in records:
            w.write(r)
    tmp.replace(path)

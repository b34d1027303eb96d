"""`rlm-env eval`: run episodes on generated tasks (or a dataset) through real engines.

Read top to bottom: the config says what to run; tasks are generated (or loaded); engines are
built once and shared; episodes run concurrently under a bound, each record is appended to
`trajectories.jsonl` (fsync'd) the moment it finishes; a summary table per context length is
printed and written to `summary.json`.

A run is resumable: if the output folder already holds records, episodes whose ids are there are
not run again, so an interrupted evaluation picks up where it stopped and no finished episode is
lost or repeated. An episode whose record says infrastructure failed (an engine killed for
memory, a sandbox that would not start) measured nothing about the model: a resumed run moves
its record to `trajectories.infra.jsonl` (kept, for the audit) and runs the episode again. If the disk fills up while writing, the run stops with a clear message; every
record written before that stays intact.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import statistics
import time
import tomllib
from collections import defaultdict
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from rlm_env.episode import Episode, EpisodeConfig, EpisodeRecord, TrajectoryWriter, read_records
from rlm_env.episode.config import config_from_dict
from rlm_env.sandbox import SandboxPool
from rlm_env.tasks.base import Task

console = Console(stderr=True)


class EvalConfig(BaseModel):
    """What `rlm-env eval` runs. CLI flags override the [eval] section of the TOML file."""

    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)

    task: str | None = "niah"
    """Generated task family; ignored when `dataset` is set."""
    dataset: str | None = None
    """A JSONL / Parquet file or HF datasets folder of user tasks."""
    lengths: list[str] = ["8k"]
    """Context lengths in tokens for generated tasks (e.g. "8k", "1M")."""
    episodes: int = Field(4, gt=0)
    """Episodes per length (each on a different seed)."""
    split: str = "test"
    """Which split of the generated family to draw from."""
    seed: int = 0
    """First seed; episode k of a length uses seed + k."""
    model: str = "default"
    """Root model spec (see `rlm_env.models.build_model`)."""
    sub_model: str | None = None
    """Sub-call model spec; None shares the root's engine."""
    adapter: str | None = None
    """Trained weights on top of `model`: a peft LoRA adapter directory (merged once, cached) or a
    full checkpoint directory (see `rlm_env.models.adapter`); its identity is every call's checkpoint."""
    concurrency: int = Field(4, gt=0)
    """Episodes in flight at once."""
    out: str = "runs/eval"
    """Output folder."""
    engine: dict[str, Any] = {}
    """EngineConfig fields for the vLLM engines (replicas, max_model_len, kvcache_gb, ...)."""
    rubric: dict[str, Any] = {}
    """RubricConfig fields (weights, cost coefficients)."""


def load_eval_config(args: Any) -> tuple[EvalConfig, EpisodeConfig]:
    data: dict[str, Any] = {}
    if getattr(args, "config", None):
        with open(args.config, "rb") as f:
            data = tomllib.load(f)
    eval_data = dict(data.get("eval", {}))
    for key in ("task", "dataset", "episodes", "model", "sub_model", "adapter", "seed", "concurrency", "out"):
        value = getattr(args, key, None)
        if value is not None:
            eval_data[key] = value
    if getattr(args, "lengths", None):
        eval_data["lengths"] = [x.strip() for x in args.lengths.split(",") if x.strip()]
    try:
        eval_config = EvalConfig.model_validate(eval_data)
    except ValidationError as e:
        raise SystemExit(f"bad [eval] config: {e}") from None
    overrides = dict(getattr(args, "set", None) or [])
    try:
        episode_config = config_from_dict(data.get("episode", {}), overrides)
    except ValueError as e:
        raise SystemExit(str(e)) from None
    return eval_config, episode_config


def build_tasks(config: EvalConfig) -> list[Task]:
    if config.dataset:
        from rlm_env.tasks.dataset import load_dataset_tasks

        return load_dataset_tasks(config.dataset, limit=config.episodes)
    from rlm_env.tasks import make_tasks, parse_length

    if not config.task:
        raise SystemExit("eval needs --task or --dataset")
    tasks: list[Task] = []
    for length in config.lengths:
        for task in make_tasks(
            config.task, [parse_length(length)], config.episodes, split=config.split, seed=config.seed
        ):
            task.metadata.setdefault("length_label", length)
            tasks.append(task)
    return tasks


HARD_DEADLINE_MARGIN_S = 30.0


def hard_deadline_s(config: EpisodeConfig) -> float:
    """When an episode is killed whatever it is doing: its wall-clock budget, plus the longest a
    cell, a worker restart and a clean finish may legitimately run past it, plus a margin."""
    sb = config.sandbox
    return (
        config.budget.wall_clock_s
        + sb.cell_timeout_s
        + sb.kill_grace_s
        + sb.startup_timeout_s
        + (HARD_DEADLINE_MARGIN_S)
    )


async def run_with_hard_deadline(episode: Episode, deadline_s: float | None = None) -> EpisodeRecord:
    """`episode.run()`, killed at the hard deadline (issue 13: no episode may stall a run).

    Every wait inside an episode has its own deadline, so this is a backstop. A kill is labelled
    as what it is, the episode's own wall-clock budget spent (`stop_reason="wall_clock"`), not an
    infrastructure failure: the sandbox is closed first, then the record is finished (scored)."""
    limit = hard_deadline_s(episode.config) if deadline_s is None else deadline_s
    try:
        async with asyncio.timeout(limit):
            return await episode.run()
    except TimeoutError:
        await episode.close()
        if episode.record.stop_reason is None:  # an answer already given keeps its label
            episode.record.stop_reason = "wall_clock"
        try:
            async with asyncio.timeout(HARD_DEADLINE_MARGIN_S):
                return await episode.finish(episode.record.stop_reason)
        except TimeoutError:  # scoring itself hung: the record stays unscored, never infra
            return episode.record


def episode_id_for(task: Task) -> str:
    return re.sub(r"[^A-Za-z0-9_.:-]+", "_", task.id)


def _resume(path: Path) -> dict[str, EpisodeRecord]:
    """The finished episodes in `path` by id, less those flagged infra_failure: their records move
    to `trajectories.infra.jsonl` (appended, fsync'd before `path` is rewritten without them, so a
    kill in between leaves a record twice, never nowhere) and their episodes run again."""
    if not path.exists():
        return {}
    records = read_records(path)
    failed = [r for r in records if r.flags.infra_failure]
    if failed:
        with open(path.with_name("trajectories.infra.jsonl"), "a", encoding="utf-8") as f:
            f.writelines(r.to_json() + "\n" for r in failed)
            f.flush()
            os.fsync(f.fileno())
        kept = path.with_name(path.name + ".tmp")
        with open(kept, "w", encoding="utf-8") as f:
            f.writelines(r.to_json() + "\n" for r in records if not r.flags.infra_failure)
            f.flush()
            os.fsync(f.fileno())
        os.replace(kept, path)
        console.print(f"{len(failed)} episode(s) failed on infrastructure: running them again")
    return {r.episode_id: r for r in records if not r.flags.infra_failure}


async def run_eval(
    config: EvalConfig,
    episode_config: EpisodeConfig,
    tasks: list[Task],
    root_model: Any,
    sub_model: Any,
    rubric: Any,
) -> list[EpisodeRecord]:
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "trajectories.jsonl"
    done = _resume(path)
    todo = [t for t in tasks if episode_id_for(t) not in done]
    if done:
        console.print(f"resuming: {len(done)} episode(s) already in {path}, {len(todo)} to run")
    records = [done[episode_id_for(t)] for t in tasks if episode_id_for(t) in done]
    semaphore = asyncio.Semaphore(config.concurrency)
    writer = TrajectoryWriter(path)
    # Warm sandboxes: a cold start is most of the environment's own time in short episodes.
    pool = SandboxPool(episode_config.sandbox, size=min(config.concurrency, 8))

    async def one(task: Task) -> EpisodeRecord:
        async with semaphore:
            episode = Episode(
                task,
                episode_config,
                root_model,
                sub_model,
                episode_id=episode_id_for(task),
                rubric=rubric,
                sandbox_pool=pool,
            )
            try:
                return await run_with_hard_deadline(episode)
            finally:
                await episode.close()

    columns = (
        TextColumn("[bold]eval"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.description}"),
    )
    try:
        with Progress(*columns, console=console) as progress:
            bar = progress.add_task("", total=len(tasks), completed=len(records))
            pending = [asyncio.ensure_future(one(t)) for t in todo]
            for future in asyncio.as_completed(pending):
                record = await future
                try:
                    writer.write(record)
                except OSError as e:
                    for p in pending:
                        p.cancel()
                    raise SystemExit(
                        f"could not write {path}: {e}. {len(records)} finished episode(s) are saved; "
                        "free space and run the same command again to resume."
                    ) from None
                records.append(record)
                progress.update(bar, advance=1, description=f"last: {record.stop_reason}")
    finally:
        writer.close()
        await pool.close()
    return records


def summarize(records: list[EpisodeRecord]) -> list[dict[str, Any]]:
    """One row per context length: accuracy, turns, sub-calls, tokens, wall time, failures."""
    groups: dict[str, list[EpisodeRecord]] = defaultdict(list)
    for r in records:
        meta = r.task.get("metadata", {})
        groups[str(meta.get("length_label", meta.get("length_tokens", "dataset")))].append(r)

    def mean(values: list[float]) -> float:
        return round(statistics.fmean(values), 4) if values else 0.0

    rows = []
    for label, group in groups.items():
        rows.append(
            {
                "length": label,
                "episodes": len(group),
                "accuracy": mean([r.rewards.get("correctness", 0.0) for r in group]),
                "answered": mean([1.0 if r.answer.status != "none" else 0.0 for r in group]),
                "mean_turns": mean([r.budget.get("root_turns", 0) for r in group]),
                "mean_cells": mean([len(r.cells) for r in group]),
                "mean_sub_calls": mean([r.budget.get("sub_calls", 0) for r in group]),
                "mean_root_tokens": mean(
                    [
                        r.budget.get("root_prompt_tokens", 0) + r.budget.get("root_completion_tokens", 0)
                        for r in group
                    ]
                ),
                "mean_sub_tokens": mean(
                    [
                        r.budget.get("sub_prompt_tokens", 0) + r.budget.get("sub_completion_tokens", 0)
                        for r in group
                    ]
                ),
                "mean_wall_s": mean([r.wall_time_s for r in group]),
                "infra_failures": sum(1 for r in group if r.flags.infra_failure),
                "stop_reasons": dict(sorted(_count(r.stop_reason for r in group).items())),
            }
        )
    return rows


def overall_accuracy(records: list[EpisodeRecord]) -> float:
    """Mean correctness over every episode of the run (all lengths together)."""
    values = [r.rewards.get("correctness", 0.0) for r in records]
    return round(statistics.fmean(values), 4) if values else 0.0


def _count(values: Any) -> dict[str, int]:
    counts: dict[str, int] = defaultdict(int)
    for v in values:
        counts[str(v)] += 1
    return counts


SUMMARY_COLUMNS = {
    "length": "length",
    "episodes": "eps",
    "accuracy": "acc",
    "answered": "answered",
    "mean_turns": "turns",
    "mean_cells": "cells",
    "mean_sub_calls": "sub-calls",
    "mean_root_tokens": "root tok",
    "mean_sub_tokens": "sub tok",
    "mean_wall_s": "wall s",
    "infra_failures": "infra",
}


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"
    return str(value)


def print_summary(rows: list[dict[str, Any]], title: str) -> None:
    """The per-length table (means per episode), narrow enough for an 80-column terminal."""
    table = Table(title=title)
    for header in SUMMARY_COLUMNS.values():
        table.add_column(header, justify="right")
    for row in rows:
        cells = [row[key] for key in SUMMARY_COLUMNS]
        table.add_row(*(_fmt(v) for v in cells))
    Console(width=max(100, Console().width)).print(table)


def main(args: Any) -> int:
    from rewards import Rubric, RubricConfig
    from rlm_env.models import build_model

    config, episode_config = load_eval_config(args)
    tasks = build_tasks(config)
    started = time.monotonic()

    async def _run() -> list[EpisodeRecord]:
        from rlm_env.models import EngineConfig

        engine = EngineConfig(**config.engine)
        console.print(f"starting engines for {config.model!r} (first start takes ~30-60 s on CPU)")
        root = build_model(config.model, role="root", config=engine, adapter=config.adapter)
        sub = (
            root
            if config.sub_model in (None, config.model)
            else build_model(config.sub_model, role="sub", config=engine)
        )
        rubric = Rubric(RubricConfig(**config.rubric))
        try:
            return await run_eval(config, episode_config, tasks, root, sub, rubric)
        finally:
            await root.close()
            if sub is not root:
                await sub.close()

    records = asyncio.run(_run())
    rows = summarize(records)
    summary = {
        "config": config.model_dump(),
        "accuracy": overall_accuracy(records),
        "checkpoints": sorted(
            {c.checkpoint or "unknown" for r in records for c in r.calls if c.role == "root"}
        ),
        "rows": rows,
        "wall_time_s": round(time.monotonic() - started, 2),
    }
    out = Path(config.out)
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    print_summary(rows, f"{config.task or config.dataset} on {config.model} ({len(records)} episodes)")
    console.print(f"trajectories: {out / 'trajectories.jsonl'}\nsummary: {out / 'summary.json'}")
    return 0

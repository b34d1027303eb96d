"""`rlm-env collect`: many episodes, written as trajectories and a Parquet dataset.

Collection is evaluation with a different purpose, so it runs on `evaluate.run_eval` (bounded
concurrency, warm sandbox pool, progress bar, one fsync'd JSON line per finished episode,
resume by episode id) and adds what a dataset needs:

- a worker name and a slice of the tasks: worker i of K takes tasks i, i+K, i+2K, ... and
  writes only under `DIR/workers/<name>/` and `DIR/data/<name>-*.parquet`, so any number of
  machines (or Ray workers, `--workers K`) collect into one folder without ever writing the same
  file; a shared filesystem, or copying the folders together afterwards, gives one dataset;
- when a worker's episodes are all done, its Parquet shards are rebuilt from its JSONL (see
  `collect.dataset`). The JSONL is the source of truth: an interrupted run (Ctrl-C, kill -9, a
  full disk) loses no finished episode and repeats none, and re-running the same command
  finishes the episodes that were missing and then writes the shards.

What is not guaranteed: an episode that was in flight when the run stopped is run again from
the start (its partial work is not saved), and with a sampling temperature it may differ.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import ConfigDict, Field, ValidationError

from rlm_env.episode import EpisodeConfig, EpisodeRecord
from rlm_env.episode.config import config_from_dict
from rlm_env.evaluate import EvalConfig, build_tasks, console, run_eval
from rlm_env.tasks.base import Task

ModelFactory = Callable[["CollectConfig"], tuple[Any, Any]]
"""Builds (root model, sub model) for one worker; default: `build_model` on the config's specs."""


class CollectConfig(EvalConfig):
    """What `rlm-env collect` runs: every [eval] field, with collection defaults, plus sharding.
    CLI flags override the [collect] section of the TOML file (an [eval] section is read too)."""

    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)

    split: str = "train"
    """Collection is usually for training, so it draws from the train split by default."""
    out: str = "runs/collect"
    """Output folder: workers/<name>/trajectories.jsonl and data/<name>-NNNNN.parquet."""
    worker: str = "w0"
    """This worker's name: it names its folder and its shard files (letters, digits, _.-). The
    CLI defaults it to "w<worker_index>"."""
    worker_index: int = Field(0, ge=0)
    """Which slice of the tasks this worker runs (tasks worker_index, +num_workers, ...)."""
    num_workers: int = Field(1, gt=0)
    """How many workers share the tasks (each machine passes the same value)."""
    rows_per_shard: int = Field(1000, gt=0)
    """Episodes per Parquet file."""


_KEYS = ("task", "dataset", "episodes", "model", "sub_model", "seed", "split", "concurrency", "out")


def load_collect_config(args: Any) -> tuple[CollectConfig, EpisodeConfig]:
    data: dict[str, Any] = {}
    if getattr(args, "config", None):
        with open(args.config, "rb") as f:
            data = tomllib.load(f)
    values = {**data.get("eval", {}), **data.get("collect", {})}
    for key in (*_KEYS, "worker", "worker_index", "num_workers"):
        value = getattr(args, key, None)
        if value is not None:
            values[key] = value
    if getattr(args, "lengths", None):
        values["lengths"] = [x.strip() for x in args.lengths.split(",") if x.strip()]
    values.setdefault("worker", f"w{values.get('worker_index', 0)}")  # distinct per slice by default
    try:
        config = CollectConfig.model_validate(values)
    except ValidationError as e:
        raise SystemExit(f"bad [collect] config: {e}") from None
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", config.worker):
        raise SystemExit(f"worker name {config.worker!r}: use letters, digits, '_', '.', '-'")
    if config.worker_index >= config.num_workers:
        raise SystemExit(f"worker_index {config.worker_index} must be below num_workers {config.num_workers}")
    try:
        episode_config = config_from_dict(data.get("episode", {}), dict(getattr(args, "set", None) or []))
    except ValueError as e:
        raise SystemExit(str(e)) from None
    return config, episode_config


def worker_dir(out: str | Path, worker: str) -> Path:
    return Path(out) / "workers" / worker


def worker_tasks(config: CollectConfig) -> list[Task]:
    """This worker's slice of the run's task list (`evaluate.build_tasks` order: lengths outer,
    seeds inner). Generated tasks outside the slice are never generated: a worker of a 1M-token
    run builds only its own contexts."""
    if config.dataset or not config.task:
        return build_tasks(config)[config.worker_index :: config.num_workers]
    from rlm_env.tasks import get_family, parse_length

    family = get_family(config.task)
    plan = [(length, config.seed + i) for length in config.lengths for i in range(config.episodes)]
    tasks = []
    for length, seed in plan[config.worker_index :: config.num_workers]:
        task = family.generate(seed, parse_length(length), config.split)
        task.metadata.setdefault("length_label", length)
        tasks.append(task)
    return tasks


async def collect_worker(
    config: CollectConfig,
    episode_config: EpisodeConfig,
    root_model: Any,
    sub_model: Any,
    rubric: Any,
    tasks: list[Task] | None = None,
) -> list[EpisodeRecord]:
    """Run (or resume) this worker's episodes, then rebuild its Parquet shards."""
    from rlm_env.collect.dataset import write_worker_shards

    tasks = worker_tasks(config) if tasks is None else tasks
    folder = worker_dir(config.out, config.worker)
    eval_view = EvalConfig(**{**config.model_dump(exclude=set(_OWN_FIELDS)), "out": str(folder)})
    records = await run_eval(eval_view, episode_config, tasks, root_model, sub_model, rubric)
    shards = write_worker_shards(config.out, config.worker, records, rows_per_shard=config.rows_per_shard)
    (folder / "collect.json").write_text(
        json.dumps(
            {
                "config": config.model_dump(),
                "episode": episode_config.model_dump(mode="json"),
                "shards": shards,
            }
        )
    )
    return records


_OWN_FIELDS = ("worker", "worker_index", "num_workers", "rows_per_shard")


def default_models(config: CollectConfig) -> tuple[Any, Any]:
    from rlm_env.models import EngineConfig, build_model

    engine = EngineConfig(**config.engine)
    root = build_model(config.model, role="root", config=engine)
    sub = (
        root
        if config.sub_model in (None, config.model)
        else build_model(config.sub_model, role="sub", config=engine)
    )
    return root, sub


def run_worker(
    config: CollectConfig, episode_config: EpisodeConfig, make_models: ModelFactory | None = None
) -> int:
    """One worker, start to end, in its own event loop: build models, collect, close. Returns
    the number of episodes this worker's folder holds."""
    from rewards import Rubric, RubricConfig

    async def _run() -> int:
        root, sub = (make_models or default_models)(config)
        try:
            records = await collect_worker(
                config, episode_config, root, sub, Rubric(RubricConfig(**config.rubric))
            )
            return len(records)
        finally:
            await root.close()
            if sub is not root:
                await sub.close()

    return asyncio.run(_run())


def run_on_ray(
    config: CollectConfig,
    episode_config: EpisodeConfig,
    workers: int,
    make_models: ModelFactory | None = None,
) -> dict[str, int]:
    """`workers` Ray tasks, worker i named "ray-i", each running `run_worker` on its slice.

    Ray places them on any node of the cluster (`ray.init(address="auto")` when RAY_ADDRESS is
    set, else a local instance); every node must see `config.out` (a shared filesystem), or the
    worker folders are copied together afterwards. Returns episodes per worker."""
    import os

    import ray

    if not ray.is_initialized():
        ray.init(
            address=os.environ.get("RAY_ADDRESS"),
            include_dashboard=False,
            log_to_driver=False,
            ignore_reinit_error=True,
        )
    remote = ray.remote(num_cpus=0)(run_worker)
    configs = [
        config.model_copy(update={"worker": f"ray-{i}", "worker_index": i, "num_workers": workers})
        for i in range(workers)
    ]
    counts = ray.get([remote.remote(c, episode_config, make_models) for c in configs])
    return {c.worker: n for c, n in zip(configs, counts, strict=True)}


def main(args: Any) -> int:
    from rlm_env.collect.dataset import dataset_files
    from rlm_env.episode import read_records
    from rlm_env.evaluate import print_summary, summarize

    config, episode_config = load_collect_config(args)
    started = time.monotonic()
    workers = getattr(args, "workers", None) or 0
    if workers > 1:
        counts = run_on_ray(config, episode_config, workers)
        console.print(f"workers: {counts}")
    else:
        console.print(f"worker {config.worker} ({config.worker_index + 1} of {config.num_workers})")
        run_worker(config, episode_config)
    out = Path(config.out)
    records = [r for p in sorted(out.glob("workers/*/trajectories.jsonl")) for r in read_records(p)]
    summary = {
        "config": config.model_dump(),
        "rows": summarize(records),
        "wall_time_s": round(time.monotonic() - started, 2),
    }
    # One machine of several writes its summary in its own folder: never two writers on one file.
    alone = workers > 1 or config.num_workers == 1
    (out if alone else worker_dir(out, config.worker)).joinpath("summary.json").write_text(
        json.dumps(summary, indent=2, default=str)
    )
    print_summary(summary["rows"], f"collected {len(records)} episodes into {out}")
    console.print(f"dataset: {len(dataset_files(out))} Parquet file(s) under {out / 'data'}")
    return 0

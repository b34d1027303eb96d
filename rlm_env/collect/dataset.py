"""The collected dataset: one Parquet row per episode, versioned, loadable with `datasets`.

    from datasets import load_dataset
    ds = load_dataset("parquet", data_files="runs/collect/data/*.parquet", split="train")

Every field is documented in docs/collect-dataset.md (`DATASET_SCHEMA_VERSION` there and in
each file's metadata; bump it on any incompatible change). What the rows guarantee:

- contexts are stored by reference (`context_ref`: the generator's family, split, seed and
  target length, or the dataset file and row id) plus their metadata (`context_*`), never
  inlined: a 1M-token context costs a few hundred bytes; `resolve_context_ref` rebuilds it;
- each rubric component is its own float column (`reward_<name>`; the total is `reward`);
- the root sample (token ids, loss mask, logprobs) is in columns a trainer reads without
  re-rendering the chat, and `record_json` holds the full `EpisodeRecord` (lossless);
- `trainable` is `EpisodeRecord.training_exclusion() is None`, the one rule every consumer uses.

Shards are written per worker (`data/<worker>-NNNNN.parquet`) from that worker's JSONL, each
to a temporary name then renamed, so a reader never sees half a file and a crash leaves the
previous shards intact. Workers of one run share a rubric, so their files share one schema.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from rlm_env.episode.record import EpisodeRecord

DATASET_SCHEMA_VERSION = 1
DEFAULT_COMPONENTS = ("correctness", "correctness_any", "format", "cost", "infra_failure", "mask")
"""Reward components of the default rubric; a run's own components are added after these."""


def context_ref(task: dict[str, Any]) -> dict[str, Any]:
    """How to rebuild the context: a generated family's arguments, or a dataset row id."""
    meta = task.get("metadata") or {}
    if meta.get("family") and "seed" in meta and "target_tokens" in meta:
        return {
            "kind": "generated",
            "family": meta["family"],
            "split": meta.get("split", "train"),
            "seed": meta["seed"],
            "target_tokens": meta["target_tokens"],
            "knobs": meta.get("knobs") or {},
        }
    return {"kind": "dataset", "source": meta.get("source"), "row": meta.get("row"), "id": task.get("id")}


def resolve_context_ref(ref: dict[str, Any]) -> Any:
    """The `Task` (context included) a generated reference describes."""
    if ref.get("kind") != "generated":
        raise ValueError(f"only generated contexts can be rebuilt from a reference, got {ref!r}")
    from rlm_env.tasks import get_family

    family = get_family(ref["family"])
    return family.generate(ref["seed"], ref["target_tokens"], ref["split"], **ref.get("knobs", {}))


def _count_calls(record: EpisodeRecord, role: str) -> int:
    return sum(1 for c in record.calls if c.role == role) + sum(
        _count_calls(c, role) for c in record.children
    )


def record_to_row(record: EpisodeRecord, worker: str, components: list[str]) -> dict[str, Any]:
    task = record.task or {}
    meta = task.get("metadata") or {}
    budget = record.budget
    ctx = record.context_meta or {}
    sample = record.root_sample
    row: dict[str, Any] = {
        "schema_version": DATASET_SCHEMA_VERSION,
        "record_schema_version": record.schema_version,
        "episode_id": record.episode_id,
        "worker": worker,
        "task_id": task.get("id"),
        "family": meta.get("family"),
        "split": meta.get("split"),
        "seed": meta.get("seed"),
        "length_label": meta.get("length_label"),
        "length_tokens": meta.get("length_tokens"),
        "question": task.get("question"),
        "expected_answer": json.dumps(task.get("expected_answer")),
        "scorer": task.get("scorer"),
        "task_metadata": json.dumps(meta, default=str),
        "context_ref": json.dumps(context_ref(task)),
        "context_type": ctx.get("type_name", task.get("context_type")),
        "context_length": ctx.get("length"),
        "context_bytes": ctx.get("size_bytes"),
        "context_sha256": ctx.get("sha256"),
        "root_model": next((c.model for c in record.calls if c.role == "root"), None),
        "answer": json.dumps(record.answer.content, default=str),
        "answer_status": record.answer.status,
        "answer_via": record.answer.via,
        "stop_reason": record.stop_reason,
        "reward": record.rewards.get("reward"),
        **{f"reward_{name}": record.rewards.get(name) for name in components},
        "trainable": record.training_exclusion() is None,
        "training_exclusion": record.training_exclusion(),
        "infra_failure": record.flags.infra_failure,
        "model_failure": record.flags.model_failure,
        "infra_errors": list(record.flags.infra_errors),
        "root_turns": budget.get("root_turns", 0),
        "cells": len(record.cells),
        "sub_calls": budget.get("sub_calls", 0),
        "child_episodes": len(record.children),
        "root_prompt_tokens": budget.get("root_prompt_tokens", 0),
        "root_completion_tokens": budget.get("root_completion_tokens", 0),
        "sub_prompt_tokens": budget.get("sub_prompt_tokens", 0),
        "sub_completion_tokens": budget.get("sub_completion_tokens", 0),
        "wall_time_s": record.wall_time_s,
        "model_time_s": record.model_time_s,
        "subcall_time_s": record.subcall_time_s,
        "started_at": record.started_at,
        "root_sample_available": sample.available,
        "root_sample_consistent": sample.consistent,
        "root_token_ids": list(sample.token_ids),
        "root_loss_mask": list(sample.loss_mask),
        "root_logprobs": list(sample.logprobs),
        "record_json": record.to_json(),
    }
    return row


def arrow_schema(components: list[str]) -> pa.Schema:
    s, i64, f64, b = pa.string(), pa.int64(), pa.float64(), pa.bool_()
    fields = [
        ("schema_version", i64), ("record_schema_version", i64), ("episode_id", s), ("worker", s),
        ("task_id", s), ("family", s), ("split", s), ("seed", i64), ("length_label", s),
        ("length_tokens", i64), ("question", s), ("expected_answer", s), ("scorer", s),
        ("task_metadata", s), ("context_ref", s), ("context_type", s), ("context_length", i64),
        ("context_bytes", i64), ("context_sha256", s), ("root_model", s), ("answer", s),
        ("answer_status", s), ("answer_via", s), ("stop_reason", s), ("reward", f64),
        *((f"reward_{name}", f64) for name in components),
        ("trainable", b), ("training_exclusion", s), ("infra_failure", b), ("model_failure", b),
        ("infra_errors", pa.list_(s)), ("root_turns", i64), ("cells", i64), ("sub_calls", i64),
        ("child_episodes", i64), ("root_prompt_tokens", i64), ("root_completion_tokens", i64),
        ("sub_prompt_tokens", i64), ("sub_completion_tokens", i64), ("wall_time_s", f64),
        ("model_time_s", f64), ("subcall_time_s", f64), ("started_at", f64),
        ("root_sample_available", b), ("root_sample_consistent", b),
        ("root_token_ids", pa.list_(pa.int32())), ("root_loss_mask", pa.list_(pa.int8())),
        ("root_logprobs", pa.list_(pa.float32())), ("record_json", s),
    ]  # fmt: skip
    return pa.schema(fields, metadata={"rlm_env_dataset_schema_version": str(DATASET_SCHEMA_VERSION)})


def components_of(records: list[EpisodeRecord]) -> list[str]:
    seen = list(DEFAULT_COMPONENTS)
    for r in records:
        seen += [k for k in r.rewards if k != "reward" and k not in seen]
    return seen


def records_table(records: list[EpisodeRecord], worker: str = "") -> pa.Table:
    components = components_of(records)
    rows = [record_to_row(r, worker, components) for r in records]
    return pa.Table.from_pylist(rows, schema=arrow_schema(components))


def write_table_atomically(table: pa.Table, path: Path) -> None:
    """Write to a temporary name, then rename: a crash or a full disk never leaves a torn file."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        pq.write_table(table, tmp, compression="zstd")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_worker_shards(
    out: str | Path, worker: str, records: list[EpisodeRecord], rows_per_shard: int = 1000
) -> list[str]:
    """(Re)write this worker's shards data/<worker>-NNNNN.parquet, sorted by episode id so the
    files depend on what was collected, not on the order episodes finished in."""
    data = Path(out) / "data"
    data.mkdir(parents=True, exist_ok=True)
    records = sorted(records, key=lambda r: r.episode_id)
    names = []
    try:
        for n, start in enumerate(range(0, max(len(records), 1), rows_per_shard)):
            path = data / f"{worker}-{n:05d}.parquet"
            write_table_atomically(records_table(records[start : start + rows_per_shard], worker), path)
            names.append(path.name)
    except OSError as e:
        raise SystemExit(
            f"could not write the Parquet shards under {data}: {e}. The trajectories are safe in "
            "workers/*/trajectories.jsonl; free space and run the same command again."
        ) from None
    own = re.compile(rf"{re.escape(worker)}-\d{{5}}\.parquet")  # not "ray-1-..." for worker "ray"
    for stale in data.glob(f"{worker}-*.parquet"):  # a rerun with fewer shards than before
        if own.fullmatch(stale.name) and stale.name not in names:
            stale.unlink()
    return names


def dataset_files(out: str | Path) -> list[str]:
    return sorted(str(p) for p in (Path(out) / "data").glob("*.parquet"))


def load_collected(out: str | Path, split: str = "train") -> Any:
    """The run's dataset as a `datasets.Dataset` (all workers' shards)."""
    from datasets import load_dataset

    files = dataset_files(out)
    if not files:
        raise FileNotFoundError(f"no Parquet shards under {Path(out) / 'data'}")
    return load_dataset("parquet", data_files=files, split=split)

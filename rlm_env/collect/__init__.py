"""Offline trajectory collection: `rlm-env collect` and `rlm-env export`.

- `run`: collection on top of `evaluate.run_eval` (concurrency, progress, resume), with worker
  slices and Ray workers writing into one folder;
- `dataset`: the versioned Parquet schema (one row per episode, contexts by reference) and
  per-worker shard writing;
- `filters`: picking episodes for a training set, and exporting records or root samples.

Layout of a collect folder:

    DIR/workers/<worker>/trajectories.jsonl   the records (source of truth, resumable)
    DIR/data/<worker>-00000.parquet           the dataset (rebuilt from the JSONL)
    DIR/summary.json                          per-length summary, as `rlm-env eval` writes it
"""

from rlm_env.collect.dataset import DATASET_SCHEMA_VERSION, load_collected, resolve_context_ref
from rlm_env.collect.filters import RecordFilter, export_run, iter_run_records, load_samples
from rlm_env.collect.run import CollectConfig, collect_worker, run_on_ray, run_worker

__all__ = [
    "DATASET_SCHEMA_VERSION",
    "CollectConfig",
    "RecordFilter",
    "collect_worker",
    "export_run",
    "iter_run_records",
    "load_collected",
    "load_samples",
    "resolve_context_ref",
    "run_on_ray",
    "run_worker",
]

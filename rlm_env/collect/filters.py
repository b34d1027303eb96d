"""Building training sets from collected runs: filter records, export them or their samples.

A `RecordFilter` keeps an episode when every criterion that is set holds (unset = no
constraint). "trainable" means `EpisodeRecord.training_exclusion() is None`, the record's one
rule, never re-derived here.

Exports (`export_run`), by the output's name:

- `*.jsonl`: the kept `EpisodeRecord`s, one per line (readable by `read_records`, and by the
  viewer);
- `*.parquet`: the kept episodes as dataset rows (same schema as the collected dataset);
- `--samples` (`*.samples.parquet` / `*.samples.jsonl`): just the root samples, as
  `training.samples.TrainingSample` rows (token ids, loss mask, logprobs, reward, group
  advantage), built by `training.samples.samples_from_records` itself, so what training reads
  is exactly what it would have built from the records (`load_samples` reads them back).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from rlm_env.collect.dataset import records_table, write_table_atomically
from rlm_env.episode.record import EpisodeRecord, TrajectoryWriter, read_records


class RecordFilter(BaseModel):
    """Which episodes to keep; every field left at None is no constraint."""

    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)

    min_reward: float | None = None
    """Keep episodes whose total `reward` is at least this."""
    max_reward: float | None = None
    """Keep episodes whose total `reward` is at most this."""
    stop_reasons: tuple[str, ...] | None = None
    """Keep these stop reasons (e.g. ("answer",))."""
    answer_statuses: tuple[str, ...] | None = None
    """Keep these answer statuses (confirmed, fallback_text, extracted, none)."""
    families: tuple[str, ...] | None = None
    """Keep these task families (niah, oolong, ...)."""
    lengths: tuple[str, ...] | None = None
    """Keep these context lengths, as given to collect ("8k") or in tokens ("8000")."""
    trainable: bool | None = None
    """True: only episodes a trainer may use; False: only the excluded ones."""

    def matches(self, record: EpisodeRecord) -> bool:
        meta = (record.task or {}).get("metadata") or {}
        reward = record.rewards.get("reward")
        if self.min_reward is not None and (reward is None or reward < self.min_reward):
            return False
        if self.max_reward is not None and (reward is None or reward > self.max_reward):
            return False
        if self.stop_reasons is not None and record.stop_reason not in self.stop_reasons:
            return False
        if self.answer_statuses is not None and record.answer.status not in self.answer_statuses:
            return False
        if self.families is not None and meta.get("family") not in self.families:
            return False
        if self.lengths is not None and not any(_same_length(x, meta) for x in self.lengths):
            return False
        return self.trainable is None or (record.training_exclusion() is None) == self.trainable


def _same_length(wanted: str, meta: dict[str, Any]) -> bool:
    from rlm_env.tasks import parse_length

    if wanted == meta.get("length_label"):
        return True
    try:
        return parse_length(wanted) == meta.get("target_tokens")
    except ValueError:
        return False


def run_trajectory_files(folder: str | Path) -> list[Path]:
    """Every trajectories.jsonl under a run folder (eval, collect with its workers, train)."""
    folder = Path(folder)
    if folder.is_file():
        return [folder]
    return sorted(folder.rglob("trajectories.jsonl"))


def iter_run_records(folder: str | Path) -> Iterator[EpisodeRecord]:
    for path in run_trajectory_files(folder):
        yield from read_records(path)


def export_run(folder: str | Path, out: str | Path, keep: RecordFilter, samples: bool = False) -> int:
    """Write the kept episodes (or their root samples) to `out`; returns how many rows."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    records = [r for r in iter_run_records(folder) if keep.matches(r)]
    if samples:
        from training.samples import samples_from_records

        rows = [dataclasses.asdict(s) for s in samples_from_records(records)[0]]
        if out.suffix == ".jsonl":
            out.write_text("".join(json.dumps(row) + "\n" for row in rows))
        else:
            import pyarrow as pa

            write_table_atomically(pa.Table.from_pylist(rows), out)
        return len(rows)
    if out.suffix == ".jsonl":
        out.unlink(missing_ok=True)
        with TrajectoryWriter(out) as writer:
            for r in records:
                writer.write(r)
    else:
        write_table_atomically(records_table(records, worker="export"), out)
    return len(records)


def load_samples(path: str | Path) -> list[Any]:
    """Read a samples export back into `training.samples.TrainingSample` objects."""
    from training.samples import TrainingSample

    path = Path(path)
    if path.suffix == ".jsonl":
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    else:
        import pyarrow.parquet as pq

        rows = pq.read_table(path).to_pylist()
    return [TrainingSample(**row) for row in rows]


def main(args: Any) -> int:
    def names(text: str | None) -> tuple[str, ...] | None:
        return tuple(x.strip() for x in text.split(",") if x.strip()) if text else None

    keep = RecordFilter(
        min_reward=args.min_reward,
        max_reward=args.max_reward,
        stop_reasons=names(args.stop_reason),
        answer_statuses=names(args.answer_status),
        families=names(args.family),
        lengths=names(args.length),
        trainable=True if args.trainable else None,
    )
    n = export_run(args.dir, args.out, keep, samples=args.samples)
    print(f"wrote {n} {'samples' if args.samples else 'episodes'} to {args.out}")
    return 0

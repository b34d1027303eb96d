"""Loading user datasets as tasks: JSONL, Parquet, or a saved Hugging Face dataset.

Each row is one task. Fields:

- `context` (str, list or dict) **or** `context_file` (a path: a directory becomes a
  `ContextDir`, a `.json` file a JSON `ContextFile`, anything else a text `ContextFile`;
  relative paths are taken from the dataset file's folder);
- `question` (str), `answer` (any JSON value; null for unlabeled data);
- `scorer` (optional, default "exact": a name in `rewards.scorers.SCORERS`);
- `id` (optional, default `<file stem>-<row>`); any other field goes into `metadata`.

`path` may be a `.jsonl`/`.json` file (one JSON object per line), a `.parquet` file (read with
`datasets`), or a folder written by `Dataset.save_to_disk` / `DatasetDict.save_to_disk`
(read with `load_from_disk`; `split` picks the part of a DatasetDict). For JSONL and Parquet,
`split`, when given, keeps the rows whose `split` field equals it. A bad row raises
`DatasetError` naming the file, the row number (1-based) and the missing field.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from rlm_env.tasks.base import ContextDir, ContextFile, Task

KNOWN = {"context", "context_file", "question", "answer", "scorer", "id"}


class DatasetError(ValueError):
    """A dataset file or row that cannot become a task."""


def _rows(path: Path, split: str | None) -> Iterator[dict[str, Any]]:
    if path.is_dir():
        from datasets import DatasetDict, load_from_disk

        data = load_from_disk(str(path))
        if isinstance(data, DatasetDict):
            if split is None:
                if len(data) != 1:
                    raise DatasetError(f"{path} holds splits {sorted(data)}: pass split=...")
                split = next(iter(data))
            if split not in data:
                raise DatasetError(f"{path} has no split {split!r} (it has {sorted(data)})")
            data = data[split]
        yield from data
        return
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        from datasets import Dataset

        yield from Dataset.from_parquet(str(path))
        return
    if suffix not in (".jsonl", ".json", ".ndjson"):
        raise DatasetError(f"{path}: unknown dataset format (use .jsonl, .parquet or a saved dataset folder)")
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DatasetError(f"{path}, line {line_no}: not valid JSON ({e.msg})") from None
            if not isinstance(row, dict):
                raise DatasetError(f"{path}, line {line_no}: a row must be a JSON object")
            row["__row__"] = line_no
            yield row


def _context(row: dict[str, Any], base: Path, where: str) -> Any:
    if row.get("context") is not None:
        return row["context"]
    ref = row.get("context_file")
    if ref is None:
        raise DatasetError(f"{where}: missing field 'context' (or 'context_file')")
    p = Path(os.path.expanduser(str(ref)))
    p = p if p.is_absolute() else base / p
    if p.is_dir():
        return ContextDir(p)
    if not p.is_file():
        raise DatasetError(f"{where}: context_file {str(ref)!r} not found (looked at {p})")
    return ContextFile(p, "json" if p.suffix.lower() == ".json" else "text")


def row_to_task(row: dict[str, Any], row_no: int, base: Path, name: str) -> Task:
    """One row as a Task (see the module docstring for the fields)."""
    where = f"{name}, row {row_no}"
    for field in ("question", "answer"):
        if field not in row:
            raise DatasetError(f"{where}: missing field {field!r} (fields present: {sorted(row)})")
    if not isinstance(row["question"], str) or not row["question"].strip():
        raise DatasetError(f"{where}: field 'question' must be a non-empty string")
    context = _context(row, base, where)
    scorer = row.get("scorer") or "exact"
    task_id = str(row["id"]) if row.get("id") is not None else f"{Path(name).stem}-{row_no}"
    extra = {k: v for k, v in row.items() if k not in KNOWN and not k.startswith("__")}
    metadata = {"family": "dataset", "source": name, "row": row_no, **extra}
    return Task(task_id, context, row["question"], row["answer"], scorer, metadata)


def iter_dataset_tasks(path: str | os.PathLike[str], split: str | None = None) -> Iterable[Task]:
    """Tasks from a dataset, one per row, lazily."""
    path = Path(path).expanduser()
    if not path.exists():
        raise DatasetError(f"dataset {path} not found")
    base = path if path.is_dir() else path.parent
    filter_split = split if not path.is_dir() else None
    for i, row in enumerate(_rows(path, split), 1):
        row = dict(row)
        row_no = row.pop("__row__", i)
        if filter_split is not None and row.get("split") != filter_split:
            continue
        yield row_to_task(row, row_no, base, str(path))


def load_dataset_tasks(
    path: str | os.PathLike[str], split: str | None = None, limit: int | None = None
) -> list[Task]:
    """All tasks (or the first `limit`) of a JSONL / Parquet / saved-dataset `path`."""
    out = []
    for task in iter_dataset_tasks(path, split):
        if limit is not None and len(out) >= limit:
            break
        out.append(task)
    return out

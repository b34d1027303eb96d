"""What the viewer reads: the episodes of a run folder, as table rows and as episode trees.

A run folder is anything holding `trajectories.jsonl` files at any depth (an eval run, a
collect run with one folder per worker, a training run). Files are re-read when their size or
modification time changes, so a page reload shows a run that is still being written.

Nothing here ever opens a context: records hold contexts by description (`context_meta`: type,
length, bytes, hash, the prefix the root prompt showed) and what the model printed is in the
cell outputs. Long texts (a sub-call prompt can carry a big slice) are clipped for display by
the templates (`clip`), so a page stays small whatever the context size.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rlm_env.collect.filters import run_trajectory_files
from rlm_env.episode.record import CellRecord, EpisodeRecord, ModelCall, read_records


@dataclass
class Row:
    """One line of the episode table."""

    file: str
    episode_id: str
    family: str
    length: str
    reward: float | None
    status: str
    stop_reason: str
    turns: int
    sub_calls: int
    tokens: int
    wall_s: float
    trainable: bool

    @staticmethod
    def of(file: str, r: EpisodeRecord) -> Row:
        meta = (r.task or {}).get("metadata") or {}
        b = r.budget
        tokens = sum(b.get(k, 0) for k in ("root_prompt_tokens", "root_completion_tokens"))
        tokens += sum(b.get(k, 0) for k in ("sub_prompt_tokens", "sub_completion_tokens"))
        return Row(
            file=file,
            episode_id=r.episode_id,
            family=str(meta.get("family") or "dataset"),
            length=str(
                meta.get("length_label") or meta.get("target_tokens") or meta.get("length_tokens") or ""
            ),
            reward=r.rewards.get("reward"),
            status=r.answer.status,
            stop_reason=str(r.stop_reason),
            turns=int(b.get("root_turns", 0)),
            sub_calls=int(b.get("sub_calls", 0)),
            tokens=int(tokens),
            wall_s=round(r.wall_time_s, 2),
            trainable=r.training_exclusion() is None,
        )


SORT_KEYS = (
    "episode_id",
    "family",
    "length",
    "reward",
    "status",
    "stop_reason",
    "turns",
    "sub_calls",
    "tokens",
    "wall_s",
)


class RunFolder:
    """The records under one folder, cached per file by (size, mtime)."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder).resolve()
        self._cache: dict[Path, tuple[tuple[int, int], list[EpisodeRecord]]] = {}

    def files(self) -> list[Path]:
        return run_trajectory_files(self.folder)

    def records(self, path: Path) -> list[EpisodeRecord]:
        stat = path.stat()
        stamp = (stat.st_size, stat.st_mtime_ns)
        cached = self._cache.get(path)
        if cached is None or cached[0] != stamp:
            cached = self._cache[path] = (stamp, read_records(path))
        return cached[1]

    def rows(self) -> list[Row]:
        return [Row.of(self._name(p), r) for p in self.files() for r in self.records(p)]

    def episode(self, file: str, episode_id: str) -> EpisodeRecord | None:
        path = (self.folder / file).resolve()
        if path not in self.files():  # only files of this run, never an arbitrary path
            return None
        return next((r for r in self.records(path) if r.episode_id == episode_id), None)

    def _name(self, path: Path) -> str:
        return str(path.relative_to(self.folder)) if path != self.folder else path.name


def filter_and_sort(rows: list[Row], params: dict[str, str]) -> list[Row]:
    """Keep rows matching the table's filters (exact match on the select boxes, a substring of
    the episode id, a minimum reward), sorted by the chosen column."""
    for key in ("family", "length", "status", "stop_reason"):
        if params.get(key):
            rows = [r for r in rows if getattr(r, key) == params[key]]
    if params.get("q"):
        rows = [r for r in rows if params["q"].lower() in r.episode_id.lower()]
    if params.get("min_reward"):
        try:
            low = float(params["min_reward"])
            rows = [r for r in rows if r.reward is not None and r.reward >= low]
        except ValueError:
            pass
    if params.get("trainable") in ("yes", "no"):
        rows = [r for r in rows if r.trainable == (params["trainable"] == "yes")]
    key = params.get("sort") if params.get("sort") in SORT_KEYS else "episode_id"

    def sort_key(row: Row) -> tuple[bool, Any]:
        value = getattr(row, key)  # only reward can be None (an unscored run); those sort together
        return (value is None, 0 if value is None else value)

    rows.sort(key=sort_key, reverse=params.get("order") == "desc")
    return rows


@dataclass
class Turn:
    """One root (or child) turn: the reply, its cells, the sub-calls and child episodes its code
    started."""

    call: ModelCall
    cells: list[CellRecord] = field(default_factory=list)
    sub_calls: list[ModelCall] = field(default_factory=list)
    children: list[Any] = field(default_factory=list)
    """`EpisodeTree`s of the rlm_query children started by this turn's code."""


@dataclass
class EpisodeTree:
    record: EpisodeRecord
    turns: list[Turn]
    prompt: list[dict[str, str]]
    """The messages before the first reply (system prompt and the question)."""
    unplaced_children: list[Any]
    """Children whose parent call is unknown (kept, shown at the end)."""


def episode_tree(record: EpisodeRecord) -> EpisodeTree:
    own = [c for c in record.calls if c.role in ("root", "child")]
    turns = {c.id: Turn(c) for c in own}
    for index, turn in enumerate(turns.values()):
        # Cells are numbered by the turn counter after the reply: the k-th reply's cells have turn k+1.
        turn.cells = [cell for cell in record.cells if cell.turn == index + 1]
    for c in record.calls:
        if c.role == "sub" and c.parent_id in turns:
            turns[c.parent_id].sub_calls.append(c)
    unplaced = []
    for child in record.children:
        tree = episode_tree(child)
        parent = child.calls[0].parent_id if child.calls else None
        (turns[parent].children if parent in turns else unplaced).append(tree)
    first = next((c.num_messages for c in own if c.num_messages), 2)
    return EpisodeTree(record, list(turns.values()), record.root_messages[:first], unplaced)

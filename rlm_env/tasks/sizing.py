"""Building a context of a target token length, in memory or straight to a file.

A family describes its context as a deterministic writer: `write(sink) -> state`, which
adds text pieces (or documents, for dict contexts) to `sink` until `sink.chars` reaches
`sink.budget` characters, and returns whatever the family needs to compute the answer (the
writer seeds its own random generator, so the same budget always gives the same text).
`build_sized` picks the budget:

- small targets: write in memory, count tokens exactly, correct the budget by the measured
  ratio and write again (at most `rounds` times) until within `tolerance` of the target;
- large targets (or a file was asked for): calibrate the ratio on a trial write of up to
  1M characters, then write, streaming to a file when `path` is given; the token count is
  estimated from a sample of pieces spread over the whole text (`length_measure:
  "estimated"`), and the text is written once more only if that estimate is more than
  2 x `tolerance` off the target.

Nothing holds more than one copy of a big context: pieces are flushed to the file in ~1 MB
blocks, or joined once at the end.
"""

from __future__ import annotations

import json
import os
import random
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rlm_env.tasks.base import ContextFile, ContextValue
from rlm_env.tasks.tokens import EXACT_LIMIT_CHARS, TokenCounter, default_counter

FILE_THRESHOLD_TOKENS = 2_000_000
"""Contexts of at least this many tokens are written to a file (knob `file_threshold_tokens`)."""

SPLITS = ("train", "test")
_FLUSH = 1 << 20
_SAMPLE_CAP = 1_000_000


def check_split(split: str) -> str:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    return split


def rng_for(family: str, split: str, seed: int, purpose: str = "") -> random.Random:
    """A generator seeded from (family, split, seed, purpose): splits never share a stream.
    String seeds hash with SHA-512, so this is stable across processes and machines."""
    return random.Random(f"rlm-env/{family}/{check_split(split)}/{int(seed)}/{purpose}")


class Sink:
    """Receives the pieces of a context, counting characters and keeping a spread sample."""

    def __init__(self, budget: int, path: Path | None = None, kind: str = "text"):
        self.budget = max(1, int(budget))
        self.kind = kind
        self.path = path
        self.chars = 0
        self.sample: list[str] = []
        self._sample_chars = 0
        self._stride = max(1, self.budget // 256)
        self._next_sample = 0
        self._items: list[str] = []
        self._docs: dict[str, str] = {}
        self._buf: list[str] = []
        self._buf_chars = 0
        self._file = None
        self._first_doc = True
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(path, "w", encoding="utf-8")
            if kind == "dict":
                self._file.write("{")

    @property
    def full(self) -> bool:
        return self.chars >= self.budget

    def add(self, text: str, key: str | None = None) -> None:
        if self.chars >= self._next_sample and self._sample_chars < _SAMPLE_CAP:
            piece = text[:8000]
            self.sample.append(piece)
            self._sample_chars += len(piece)
            self._next_sample = self.chars + self._stride
        self.chars += len(text)
        if self.kind == "dict":
            if key is None:
                raise ValueError("a dict context needs a key for every document")
            if self._file is None:
                self._docs[key] = text
                return
            text = ("" if self._first_doc else ", ") + json.dumps(key) + ": " + json.dumps(text)
            self._first_doc = False
        elif self._file is None:
            self._items.append(text)
            return
        self._buf.append(text)
        self._buf_chars += len(text)
        if self._buf_chars >= _FLUSH:
            self._flush()

    def _flush(self) -> None:
        assert self._file is not None
        self._file.write("".join(self._buf))
        self._buf, self._buf_chars = [], 0

    def pieces(self) -> list[str]:
        """The text pieces written so far (in-memory sinks only)."""
        return list(self._docs.values()) if self.kind == "dict" else self._items

    def finish(self) -> ContextValue:
        if self._file is not None:
            self._flush()
            if self.kind == "dict":
                self._file.write("}")
            self._file.close()
            return ContextFile(self.path, "json" if self.kind == "dict" else "text")
        if self.kind == "dict":
            return self._docs
        text = "".join(self._items)
        self._items = []
        return text


@dataclass
class Sized:
    context: ContextValue
    state: Any
    tokens: int
    chars: int
    measure: str
    tokenizer: str | None


def build_sized(
    write: Callable[[Sink], Any],
    target_tokens: int,
    *,
    chars_per_token: float,
    counter: TokenCounter | None = None,
    kind: str = "text",
    path: Path | None = None,
    tolerance: float = 0.03,
    rounds: int = 3,
) -> Sized:
    """Write a context of about `target_tokens` tokens (see the module docstring)."""
    counter = counter or default_counter()
    target = max(1, int(target_tokens))
    budget = int(target * chars_per_token)
    if path is None and budget <= EXACT_LIMIT_CHARS:
        for attempt in range(rounds):
            sink = Sink(budget, kind=kind)
            state = write(sink)
            context = sink.finish()
            texts = list(context.values()) if isinstance(context, dict) else [context]
            tokens, measure = counter.measure(texts, sink.chars, sink.sample, chars_per_token)
            if abs(tokens - target) <= tolerance * target or attempt == rounds - 1:
                break
            budget = max(1, int(budget * target / max(1, tokens)))
        return Sized(context, state, tokens, sink.chars, measure, counter.describe())
    if counter.exact:  # calibrate the ratio on a trial of the same writer
        trial = Sink(min(budget, 1_000_000), kind=kind)
        write(trial)
        budget = int(target * counter.ratio(trial.pieces(), chars_per_token))
    for _ in range(2):  # rewrite once if the estimate on the real sample is far off
        sink = Sink(budget, path=path, kind=kind)
        state = write(sink)
        context = sink.finish()
        tokens = round(sink.chars / counter.ratio(sink.sample, chars_per_token))
        if abs(tokens - target) <= 2 * tolerance * target:
            break
        budget = int(budget * target / max(1, tokens))
    return Sized(context, state, tokens, sink.chars, "estimated", counter.describe())


def output_path(
    task_id: str,
    length_tokens: int,
    out_dir: str | os.PathLike[str] | None,
    threshold: int | None,
    suffix: str,
) -> Path | None:
    """Where a big context goes: a file under `out_dir` (or the temp dir) when the length is at
    least `threshold` tokens; None (in memory) otherwise."""
    threshold = FILE_THRESHOLD_TOKENS if threshold is None else threshold
    if length_tokens < threshold:
        return None
    base = Path(out_dir) if out_dir is not None else Path(tempfile.gettempdir()) / "rlm-env-tasks"
    return base / f"{task_id}{suffix}"


def task_id(family: str, split: str, seed: int, length: int, knobs: dict[str, Any]) -> str:
    """Stable id: family-split-length-seed, plus a short hash of non-default knobs."""
    base = f"{family}-{split}-{length}-s{seed}"
    if not knobs:
        return base
    import hashlib

    blob = json.dumps(knobs, sort_keys=True, default=str).encode()
    return f"{base}-{hashlib.sha1(blob).hexdigest()[:8]}"


def base_metadata(family: str, split: str, seed: int, target: int, sized: Sized, knobs: dict) -> dict:
    return {
        "family": family,
        "split": split,
        "seed": seed,
        "target_tokens": target,
        "length_tokens": sized.tokens,
        "length_chars": sized.chars,
        "length_measure": sized.measure,
        "tokenizer": sized.tokenizer,
        "knobs": knobs,
    }

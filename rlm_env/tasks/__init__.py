"""Tasks: the paper's benchmark families as deterministic generators, plus user datasets.

Every family module (`niah`, `oolong`, `oolong_pairs`, `multihop`, `codeqa`) exposes
`generate(seed, length_tokens, split="train", **knobs) -> Task`: the same arguments give the
same task, train and test never share an item, and the context is about `length_tokens`
tokens of the default root model's tokenizer (see `tokens.py`; big contexts are written to
files, see `sizing.py`). `dataset.load_dataset_tasks` reads user data into the same `Task`.

    from rlm_env.tasks import make_tasks
    tasks = make_tasks("oolong", ["8k", "32k"], n=10, split="test")
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from rlm_env.tasks import codeqa, multihop, niah, oolong, oolong_pairs
from rlm_env.tasks.base import ContextDir, ContextFile, Task
from rlm_env.tasks.dataset import DatasetError, load_dataset_tasks

TASK_FAMILIES: dict[str, Any] = {
    "niah": niah,
    "oolong": oolong,
    "oolong_pairs": oolong_pairs,
    "multihop": multihop,
    "codeqa": codeqa,
}
"""Family name -> module with `generate(seed, length_tokens, split, **knobs)`."""

_UNITS = {"": 1, "k": 1_000, "m": 1_000_000, "ki": 1024, "mi": 1024**2}


def parse_length(value: str | int | float) -> int:
    """A token length: 32000, "32000", "8k" (8,000), "1M" (1,000,000), "1.5M", "8Ki" (8,192),
    "2^13" (8,192). Decimal k/M as in SI; Ki/Mi or powers of two for binary sizes."""
    if isinstance(value, bool):
        raise ValueError(f"not a length: {value!r}")
    if isinstance(value, int | float):
        n = int(value)
    else:
        text = value.strip().replace("_", "").replace(",", "")
        power = re.fullmatch(r"2\s*(?:\^|\*\*)\s*(\d+)", text)
        m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([kKmM][iI]?)?", text)
        if power:
            n = 2 ** int(power.group(1))
        elif m:
            n = int(float(m.group(1)) * _UNITS[(m.group(2) or "").lower()])
        else:
            raise ValueError(f"not a length: {value!r} (use e.g. 32000, '8k', '1M', '8Ki', '2^13')")
    if n <= 0:
        raise ValueError(f"length must be positive, got {value!r}")
    return n


def get_family(name: str) -> Any:
    try:
        return TASK_FAMILIES[name]
    except KeyError:
        raise ValueError(f"unknown task family {name!r}; known: {', '.join(sorted(TASK_FAMILIES))}") from None


def make_tasks(
    family: str,
    lengths: Iterable[str | int] | str | int,
    n: int,
    split: str = "test",
    seed: int = 0,
    **knobs: Any,
) -> list[Task]:
    """`n` tasks of `family` at each length (seeds `seed .. seed+n-1`), lengths outer."""
    module = get_family(family)
    if isinstance(lengths, str | int):
        lengths = [lengths]
    return [
        module.generate(seed + i, parse_length(length), split, **knobs)
        for length in lengths
        for i in range(n)
    ]


__all__ = [
    "TASK_FAMILIES",
    "ContextDir",
    "ContextFile",
    "DatasetError",
    "Task",
    "get_family",
    "load_dataset_tasks",
    "make_tasks",
    "parse_length",
]

"""Small example tools for configs/tools.toml and the README: pure functions of JSON values.

A tool receives JSON arguments the model chose (check them: they may be anything) and must
return JSON. These run in the host process, so keep tools free of side effects you would not
let a model trigger.
"""

from __future__ import annotations

import re


def word_count(text: str) -> int:
    """Number of whitespace-separated words in `text`."""
    if not isinstance(text, str):
        raise TypeError("text must be a str")
    return len(text.split())


def find_numbers(text: str) -> list[int]:
    """Every integer written in `text`, in order (at most 1,000)."""
    if not isinstance(text, str):
        raise TypeError("text must be a str")
    return [int(m) for m in re.findall(r"-?\d+", text)[:1000]]


def add(a: float, b: float) -> float:
    """a + b, for numbers only."""
    for v in (a, b):
        if isinstance(v, bool) or not isinstance(v, int | float):
            raise TypeError("add takes two numbers")
    return a + b


def echo(value: object = None) -> object:
    """Returns its argument unchanged (the benchmark's trivial tool)."""
    return value

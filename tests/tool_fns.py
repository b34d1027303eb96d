"""Functions the tool tests declare as custom tools (each named for what it does)."""

from __future__ import annotations

import time

CALLS: list[tuple] = []


def remember(*args, **kwargs):
    """Returns what it received, and keeps it (so a test can see what reached the host)."""
    CALLS.append((args, kwargs))
    return {"args": list(args), "kwargs": kwargs}


def sleep_for(seconds: float) -> str:
    time.sleep(seconds)
    return "slept"


def always_raises(message: str = "tool failed") -> None:
    raise ValueError(message)


def returns_a_set() -> object:
    return {1, 2, 3}


def returns_nan() -> float:
    return float("nan")


def returns_big(n: int) -> str:
    return "x" * n

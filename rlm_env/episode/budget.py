"""One budget ledger for an episode tree.

Root turns and root tokens belong to one episode; sub-calls, sub-call tokens, concurrency and
the wall clock are shared by the whole tree (a child episode started by `rlm_query` spends from
the same pool: "the remaining budget"). Every check happens on the host, so nothing the REPL
code does (replacing `llm_query`, forging frames) can spend more than the ledger allows.

`snapshot()` is what goes into the record: every limit beside every figure spent.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

from rlm_env.episode.config import BudgetConfig


class BudgetExceeded(Exception):
    """A sub-call asked for more than what is left; the REPL sees it as SubCallError."""


@dataclass
class SharedPool:
    """What the whole episode tree spends together."""

    config: BudgetConfig
    started: float = field(default_factory=time.monotonic)
    sub_calls: int = 0
    sub_prompt_tokens: int = 0
    sub_completion_tokens: int = 0
    sub_calls_failed: int = 0
    peak_concurrent_sub_calls: int = 0
    in_flight: int = 0
    children: int = 0
    semaphore: asyncio.Semaphore | None = None

    def __post_init__(self) -> None:
        self.semaphore = asyncio.Semaphore(self.config.max_concurrent_sub_calls)

    @property
    def deadline(self) -> float:
        return self.started + self.config.wall_clock_s

    def seconds_left(self) -> float:
        return self.deadline - time.monotonic()

    def sub_calls_left(self) -> int:
        return self.config.max_sub_calls - self.sub_calls

    def reserve_sub_calls(self, n: int) -> None:
        """Count n sub-calls before they run, or refuse all of them with a clear reason."""
        if n <= 0:
            return
        if self.seconds_left() <= 0:
            raise BudgetExceeded("the episode's wall-clock budget is spent")
        left = self.sub_calls_left()
        if n > left:
            raise BudgetExceeded(
                f"{n} sub-call(s) requested but only {left} of {self.config.max_sub_calls} remain"
            )
        tokens_used = self.sub_prompt_tokens + self.sub_completion_tokens
        if tokens_used >= self.config.max_sub_tokens:
            raise BudgetExceeded(
                f"sub-call token budget spent ({tokens_used} of {self.config.max_sub_tokens})"
            )
        self.sub_calls += n

    def add_sub_tokens(self, prompt_tokens: int, completion_tokens: int) -> None:
        self.sub_prompt_tokens += prompt_tokens
        self.sub_completion_tokens += completion_tokens

    async def __aenter__(self) -> SharedPool:
        """Hold one concurrency slot (used around each sub-call)."""
        assert self.semaphore is not None
        await self.semaphore.acquire()
        self.in_flight += 1
        self.peak_concurrent_sub_calls = max(self.peak_concurrent_sub_calls, self.in_flight)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.semaphore is not None
        self.in_flight -= 1
        self.semaphore.release()


@dataclass
class BudgetLedger:
    """One episode's own counters plus a reference to the tree's shared pool."""

    config: BudgetConfig
    depth: int = 0
    pool: SharedPool | None = None
    root_turns: int = 0
    root_prompt_tokens: int = 0
    root_completion_tokens: int = 0
    last_prompt_tokens: int = 0

    def __post_init__(self) -> None:
        if self.pool is None:
            self.pool = SharedPool(self.config)

    def child(self) -> BudgetLedger:
        """A ledger for a child episode: its own turns, the same shared pool."""
        assert self.pool is not None
        self.pool.children += 1
        return BudgetLedger(self.config, depth=self.depth + 1, pool=self.pool)

    def can_recurse(self) -> bool:
        return self.depth + 1 < self.config.max_depth

    def add_root_call(self, prompt_tokens: int, completion_tokens: int) -> None:
        self.root_turns += 1
        self.root_prompt_tokens += prompt_tokens
        self.root_completion_tokens += completion_tokens
        self.last_prompt_tokens = prompt_tokens

    def root_stop_reason(self, next_prompt_tokens: int, reply_max_tokens: int) -> str | None:
        """Why the next root call must not happen, or None if it may."""
        assert self.pool is not None
        if self.root_turns >= self.config.max_root_turns:
            return "max_turns"
        if self.root_completion_tokens >= self.config.max_root_tokens:
            return "max_root_tokens"
        if self.pool.seconds_left() <= 0:
            return "wall_clock"
        if next_prompt_tokens + min(reply_max_tokens, 16) > self.config.context_window:
            return "context_window"
        return None

    def snapshot(self) -> dict[str, object]:
        """Every limit and every figure spent, for the record."""
        assert self.pool is not None
        pool = self.pool
        return {
            "limits": self.config.model_dump(),
            "depth": self.depth,
            "root_turns": self.root_turns,
            "root_prompt_tokens": self.root_prompt_tokens,
            "root_completion_tokens": self.root_completion_tokens,
            "last_root_prompt_tokens": self.last_prompt_tokens,
            "sub_calls": pool.sub_calls,
            "sub_calls_failed": pool.sub_calls_failed,
            "sub_prompt_tokens": pool.sub_prompt_tokens,
            "sub_completion_tokens": pool.sub_completion_tokens,
            "peak_concurrent_sub_calls": pool.peak_concurrent_sub_calls,
            "child_episodes": pool.children,
            "wall_clock_s": round(time.monotonic() - pool.started, 4),
        }

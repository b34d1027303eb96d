"""One budget ledger for an episode tree.

Root turns and root tokens belong to one episode; sub-calls, sub-call tokens, concurrency and
the wall clock are shared by the whole tree (a child episode started by `rlm_query` spends from
the same pool: "the remaining budget"). Every check happens on the host, so nothing the REPL
code does (replacing `llm_query`, forging frames) can spend more than the ledger allows.

A child may be held to a share of what its parent has left (`child_budget_fraction`): its
ledger then carries an `allotment` of sub-calls and sub-call tokens, fixed when the child
starts, that it and its own descendants together may not exceed; every reservation is checked
against each allotment up the chain before the pool, and counted in each. What a child leaves
unspent returns to the pool, or is charged to it when the child ends
(`child_unused_budget="forfeited"`). Sub-call tokens are counted after the call, so a child
can overrun its token allotment by at most the tokens of the calls it had in flight (its
calls' `max_tokens` is capped by what is left, see SubCallRouter._max_tokens).

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
    parent: BudgetLedger | None = None
    allotment: dict[str, int] | None = None
    """A child's share: {"sub_calls": n, "sub_tokens": t} it and its descendants may spend."""
    subtree_sub_calls: int = 0
    """Sub-calls reserved by this episode and its descendants."""
    subtree_sub_tokens: int = 0
    forfeited_sub_calls: int = 0
    forfeited_sub_tokens: int = 0

    def __post_init__(self) -> None:
        if self.pool is None:
            self.pool = SharedPool(self.config)

    def _chain(self) -> list[BudgetLedger]:
        out, node = [], self
        while node is not None:
            out.append(node)
            node = node.parent
        return out

    def child(self) -> BudgetLedger:
        """A ledger for a child episode: its own turns, the same shared pool, and (when
        `child_budget_fraction` < 1) an allotment of what this ledger has left."""
        assert self.pool is not None
        self.pool.children += 1
        allotment = None
        if self.config.child_budget_fraction < 1.0:
            share = self.config.child_budget_fraction
            allotment = {
                "sub_calls": max(1, int(self.sub_calls_left() * share)),
                "sub_tokens": max(1, int(self.sub_tokens_left() * share)),
            }
        return BudgetLedger(
            self.config, depth=self.depth + 1, pool=self.pool, parent=self, allotment=allotment
        )

    def sub_calls_left(self) -> int:
        """What the pool and every allotment up the chain still allow."""
        assert self.pool is not None
        left = self.pool.sub_calls_left()
        for node in self._chain():
            if node.allotment is not None:
                left = min(left, node.allotment["sub_calls"] - node.subtree_sub_calls)
        return left

    def sub_tokens_left(self) -> int:
        assert self.pool is not None
        left = self.config.max_sub_tokens - self.pool.sub_prompt_tokens - self.pool.sub_completion_tokens
        for node in self._chain():
            if node.allotment is not None:
                left = min(left, node.allotment["sub_tokens"] - node.subtree_sub_tokens)
        return left

    def reserve_sub_calls(self, n: int) -> None:
        """Count n sub-calls against every allotment up the chain and the pool, or refuse."""
        assert self.pool is not None
        if n <= 0:
            return
        for node in self._chain():
            if node.allotment is None:
                continue
            calls_left = node.allotment["sub_calls"] - node.subtree_sub_calls
            if n > calls_left:
                raise BudgetExceeded(
                    f"{n} sub-call(s) requested but only {max(calls_left, 0)} of the "
                    f"{node.allotment['sub_calls']} allotted to the child RLM at depth {node.depth} remain"
                )
            if node.subtree_sub_tokens >= node.allotment["sub_tokens"]:
                raise BudgetExceeded(
                    f"the child RLM at depth {node.depth} spent its sub-call token allotment "
                    f"({node.subtree_sub_tokens} of {node.allotment['sub_tokens']})"
                )
        self.pool.reserve_sub_calls(n)
        for node in self._chain():
            node.subtree_sub_calls += n

    def add_sub_tokens(self, prompt_tokens: int, completion_tokens: int) -> None:
        assert self.pool is not None
        self.pool.add_sub_tokens(prompt_tokens, completion_tokens)
        for node in self._chain():
            node.subtree_sub_tokens += prompt_tokens + completion_tokens

    def settle_child(self) -> None:
        """When this child ends: charge its unspent allotment if the config forfeits it."""
        assert self.pool is not None
        if self.allotment is None or self.config.child_unused_budget != "forfeited":
            return
        calls = max(0, self.allotment["sub_calls"] - self.subtree_sub_calls)
        tokens = max(0, self.allotment["sub_tokens"] - self.subtree_sub_tokens)
        self.forfeited_sub_calls, self.forfeited_sub_tokens = calls, tokens
        self.pool.sub_calls += calls  # may pass max_sub_calls: nothing is left then
        self.pool.sub_completion_tokens += tokens
        for node in self._chain()[1:]:
            node.subtree_sub_calls += calls
            node.subtree_sub_tokens += tokens

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
            "allotment": self.allotment,
            "subtree_sub_calls": self.subtree_sub_calls,
            "subtree_sub_tokens": self.subtree_sub_tokens,
            "forfeited_sub_calls": self.forfeited_sub_calls,
            "forfeited_sub_tokens": self.forfeited_sub_tokens,
            "wall_clock_s": round(time.monotonic() - pool.started, 4),
        }

"""The host side of `llm_query`, `llm_batch` and `rlm_query`.

The sandbox forwards every sub-call request frame here. This router validates it, spends the
shared budget (refusing with a clear reason when it would overrun), runs the calls on the
sub-model under the tree-wide concurrency bound, records each call in the episode record, and
returns plain strings. Anything it raises reaches the model's code as `SubCallError(message)`.

An infrastructure failure (`ModelError`: engine refused, timed out, replica lost) is recorded in
the episode's flags as infra, so the reward can leave it out of the model's score.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from rlm_env.episode.budget import BudgetExceeded
from rlm_env.episode.record import ModelCall
from rlm_env.models.base import Completion, ModelError, count_tokens_fallback

if TYPE_CHECKING:
    from rlm_env.episode.episode import Episode

ALLOWED_SAMPLING = {"max_tokens": int, "temperature": float, "top_p": float}
CHILD_QUESTION = "The full request is stored in `context`. Read it with code and answer it."


class SubCallRouter:
    def __init__(self, episode: Episode, run_child: Callable[[str], Awaitable[str]]):
        self.episode = episode
        self.run_child = run_child
        self._count = 0

    async def __call__(self, fn: str, args: dict[str, Any]) -> Any:
        started = time.monotonic()
        try:
            return await self._dispatch(fn, args)
        finally:
            self.episode.record.subcall_time_s += time.monotonic() - started

    async def _dispatch(self, fn: str, args: dict[str, Any]) -> Any:
        if fn == "llm_query":
            return await self.llm_query(_prompt(args.get("prompt")), _sampling(args.get("sampling")))
        if fn == "llm_batch":
            prompts = args.get("prompts")
            if not isinstance(prompts, list | tuple):
                raise TypeError(f"llm_batch takes a list of str prompts, got {type(prompts).__name__}")
            return await self.llm_batch([_prompt(p) for p in prompts], _sampling(args.get("sampling")))
        if fn == "rlm_query":
            return await self.rlm_query(_prompt(args.get("prompt")), _sampling(args.get("sampling")))
        raise ValueError(f"unknown sub-call {fn!r}")

    async def llm_query(self, prompt: str, sampling: dict[str, Any]) -> str:
        self._check_prompt(prompt)
        self._reserve(1)
        return await self._one(prompt, sampling)

    async def llm_batch(self, prompts: list[str], sampling: dict[str, Any]) -> list[str]:
        for p in prompts:
            self._check_prompt(p)
        self._reserve(len(prompts))
        results = await asyncio.gather(*(self._one(p, sampling) for p in prompts), return_exceptions=True)
        failures = [(i, r) for i, r in enumerate(results) if isinstance(r, BaseException)]
        if failures:
            i, first = failures[0]
            raise RuntimeError(
                f"{len(failures)} of {len(prompts)} llm_batch calls failed; first (index {i}): {first}"
            )
        return list(results)  # type: ignore[arg-type]

    async def rlm_query(self, prompt: str, sampling: dict[str, Any]) -> str:
        ledger = self.episode.ledger
        if not ledger.can_recurse():
            # At the depth limit a child RLM becomes a plain model call (the paper's fallback).
            return await self.llm_query(prompt, sampling)
        self._reserve(1)
        return await self.run_child(prompt)

    # -- internals -----------------------------------------------------------------------------
    def _check_prompt(self, prompt: str) -> None:
        limit = self.episode.config.budget.max_sub_prompt_chars
        if len(prompt) > limit:
            raise ValueError(f"sub-call prompt of {len(prompt):,} characters exceeds the limit of {limit:,}")

    def _reserve(self, n: int) -> None:
        try:
            self.episode.ledger.pool.reserve_sub_calls(n)
        except BudgetExceeded as e:
            raise RuntimeError(f"sub-call budget: {e}") from None

    async def _one(self, prompt: str, sampling_overrides: dict[str, Any]) -> str:
        ep = self.episode
        self._count += 1
        call_id = f"sub-{self._count}"
        params = ep.config.sub_sampling.to_params().replace(**sampling_overrides)
        messages = [{"role": "user", "content": prompt}]
        pool = ep.ledger.pool
        started = time.monotonic()
        async with pool:
            try:
                timeout = max(0.1, min(ep.config.budget.sub_call_timeout_s, pool.seconds_left()))
                # asyncio.timeout, not wait_for: wait_for wraps every call in an extra task.
                async with asyncio.timeout(timeout):
                    completion = await ep.sub_model.generate(messages, params)
            except (ModelError, TimeoutError) as e:
                pool.sub_calls_failed += 1
                if isinstance(e, TimeoutError) and pool.seconds_left() <= 0:
                    # The episode's own clock ran out: a budget stop, not the engine's fault.
                    message = f"sub-call {call_id} stopped: the episode's wall-clock budget is spent"
                else:
                    why = f"no reply within {timeout:.0f} s" if isinstance(e, TimeoutError) else str(e)
                    message = f"sub-call {call_id} failed (infrastructure): {why}"
                    ep.flag_infra(message)
                ep.record.calls.append(self._call_record(call_id, messages, None, started, error=message))
                raise RuntimeError(message) from None
        prompt_tokens = completion.num_prompt_tokens or count_tokens_fallback(prompt)
        completion_tokens = completion.num_completion_tokens or count_tokens_fallback(completion.text)
        pool.add_sub_tokens(prompt_tokens, completion_tokens)
        ep.record.calls.append(self._call_record(call_id, messages, completion, started))
        return completion.text

    def _call_record(
        self,
        call_id: str,
        messages: list,
        completion: Completion | None,
        started: float,
        error: str | None = None,
    ) -> ModelCall:
        ep = self.episode
        keep_ids = ep.config.sub_call_policy == "trained"
        c = completion
        return ModelCall(
            id=call_id,
            role="sub",
            depth=ep.depth,
            parent_id=ep.current_root_call_id,
            messages=messages if ep.config.record_sub_messages else None,
            completion_text=c.text if c else "",
            prompt_token_ids=c.prompt_token_ids if (c and keep_ids) else None,
            completion_token_ids=c.completion_token_ids if (c and keep_ids) else None,
            logprobs=c.logprobs if (c and keep_ids) else None,
            finish_reason=c.finish_reason if c else "error",
            model=c.model if c else getattr(ep.sub_model, "name", ""),
            weight_version=c.weight_version if c else None,
            replica=c.replica if c else None,
            latency_s=round(time.monotonic() - started, 4),
            num_prompt_tokens=(c.num_prompt_tokens if c else 0),
            num_completion_tokens=(c.num_completion_tokens if c else 0),
            error=error,
        )


def _prompt(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"a sub-call prompt must be a str, got {type(value).__name__}")
    return value


def _sampling(value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise TypeError("sampling options must be keyword arguments")
    out: dict[str, Any] = {}
    for key, raw in value.items():
        if key not in ALLOWED_SAMPLING:
            raise ValueError(f"unknown sampling option {key!r}; allowed: {', '.join(ALLOWED_SAMPLING)}")
        kind = ALLOWED_SAMPLING[key]
        if isinstance(raw, bool) or not isinstance(raw, int | float):
            raise TypeError(f"sampling option {key!r} must be a number")
        out[key] = kind(raw)
    if "max_tokens" in out and out["max_tokens"] <= 0:
        raise ValueError("max_tokens must be positive")
    return out

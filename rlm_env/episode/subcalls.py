"""The host side of `llm_query`, `llm_batch` and `rlm_query`.

The sandbox forwards every sub-call request frame here. This router validates it, spends the
shared budget (refusing with a clear reason when it would overrun), runs the calls on the
sub-model under the tree-wide concurrency bound, records each call in the episode record, and
returns plain strings. Anything it raises reaches the model's code as `SubCallError(message)`.

Who is to blame is decided here, call by call:

- the model's (a `SubCallError` in the REPL, nothing flagged, the episode stays in training): a
  prompt that is not a str, too many characters, or more tokens than the sub-engine's window
  (checked with its tokenizer before sending, and again if the engine itself refuses:
  `PromptTooLong`); sampling options that are unknown, not numbers, or out of range; a call
  past the sub-call, token or wall-clock budget. `max_tokens` is capped, never trusted: at
  most the configured sub-call `max_tokens` ceiling, the tokens left in the budget and the
  room left in the window;
- the infrastructure's (`ModelError`: engine refused, timed out, replica lost): recorded in
  the episode's flags as infra, so the reward leaves it out of the model's score.

Every call is recorded with its prompt and completion ids and logprobs (cheap next to the
text), whatever the sub-call policy, so a collected dataset can later be trained either way.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from rlm_env.episode.budget import BudgetExceeded
from rlm_env.episode.record import ModelCall
from rlm_env.episode.tools import ToolRunner, generate_with_tools, sub_tools_system_message
from rlm_env.models.base import Completion, ModelError, PromptTooLong, chat_prompt_ids, count_tokens_fallback

if TYPE_CHECKING:
    from rlm_env.episode.episode import Episode

ALLOWED_SAMPLING = {"max_tokens": int, "temperature": float, "top_p": float}
MAX_TEMPERATURE = 2.0
DEFAULT_SUB_PROMPT_CHARS = 200_000
"""Character limit for a sub-engine that states no window (scripted, remote servers)."""
CHARS_PER_TOKEN_CEILING = 4
"""Sizing the character limit from a window: ~4 characters a token for English text and code
(3.7 measured on niah filler), so the limit is a cheap first check; tokens are checked exactly."""
CHILD_QUESTION = "The full request is stored in `context`. Read it with code and answer it."


class SubCallRouter:
    def __init__(self, episode: Episode, run_child: Callable[[str], Awaitable[str]]):
        self.episode = episode
        self.run_child = run_child
        self._count = 0
        self.tools = ToolRunner(episode)

    def tool_specs(self) -> list[dict[str, str]]:
        """The custom tools the REPL gets stubs for (read by the sandbox host)."""
        return self.tools.specs()

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
        if fn == "tool":
            return await self.tools.call(args.get("name"), args.get("args"), args.get("kwargs"))
        raise ValueError(f"unknown sub-call {fn!r}")

    async def llm_query(self, prompt: str, sampling: dict[str, Any]) -> str:
        self._check_prompt(prompt)
        (prompt_tokens,) = await self._check_tokens([prompt])
        self._reserve(1)
        return await self._one(prompt, sampling, prompt_tokens)

    def sub_calls_left(self) -> int:
        """Read by the sandbox host to refuse an over-budget batch frame by its count, before
        its prompts are parsed (the budget is charged before the work)."""
        return self.episode.ledger.sub_calls_left()

    async def llm_batch(self, prompts: list[str], sampling: dict[str, Any]) -> list[str]:
        left = self.sub_calls_left()
        if len(prompts) > left:  # refuse on the count before checking (and tokenizing) any prompt
            self._reserve(len(prompts))
        for i, p in enumerate(prompts):
            self._check_prompt(p, index=i)
        counts = await self._check_tokens(prompts)
        self._reserve(len(prompts))
        results = await asyncio.gather(
            *(self._one(p, sampling, n) for p, n in zip(prompts, counts, strict=True)), return_exceptions=True
        )
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
    def _window(self) -> int | None:
        window = getattr(self.episode.sub_model, "context_window", None)
        return window if isinstance(window, int) and window > 0 else None

    def prompt_char_limit(self) -> int:
        """The configured character limit, or one sized from the sub-engine's window."""
        configured = self.episode.config.budget.max_sub_prompt_chars
        if configured is not None:
            return configured
        window = self._window()
        return window * CHARS_PER_TOKEN_CEILING if window else DEFAULT_SUB_PROMPT_CHARS

    def _check_prompt(self, prompt: str, index: int | None = None) -> None:
        limit = self.prompt_char_limit()
        if len(prompt) > limit:
            which = "sub-call prompt" if index is None else f"llm_batch prompt {index}"
            raise ValueError(
                f"{which} of {len(prompt):,} characters exceeds the limit of {limit:,} "
                f"({len(prompt) - limit:,} too many): split it into smaller pieces"
            )

    async def _check_tokens(self, prompts: list[str]) -> list[int | None]:
        """Exact prompt tokens (chat template included) when the sub-engine has a tokenizer and
        a window; a prompt that leaves no room to answer is refused as the model's mistake."""
        tokenizer, window = getattr(self.episode.sub_model, "tokenizer", None), self._window()
        if tokenizer is None or window is None:
            return [None] * len(prompts)

        def count() -> list[int]:
            return [len(chat_prompt_ids(tokenizer, [{"role": "user", "content": p}])) for p in prompts]

        # Tokenizing is ~1 ms per 4K characters: keep big batches off the event loop.
        counts = await asyncio.to_thread(count) if sum(map(len, prompts)) > 20_000 else count()
        for i, n in enumerate(counts):
            if n >= window:
                which = "sub-call prompt" if len(prompts) == 1 else f"llm_batch prompt {i}"
                raise ValueError(
                    f"{which} is {n:,} tokens but the sub-model's window is {window:,} tokens "
                    f"({n - window + 1:,} too many, before any answer): split it into smaller pieces"
                )
        return counts

    def _max_tokens(self, requested: int, prompt_tokens: int | None) -> int:
        """Cap what the code asked for: the configured ceiling, the sub-token budget left, and
        the room left in the window. Never more than the model is allowed to spend."""
        tokens_left = self.episode.ledger.sub_tokens_left()  # the pool's, or a child's allotment
        cap = min(requested, max(1, tokens_left))
        window = self._window()
        if window is not None and prompt_tokens is not None:
            cap = min(cap, max(1, window - prompt_tokens))
        return max(1, cap)

    def _reserve(self, n: int) -> None:
        try:
            self.episode.ledger.reserve_sub_calls(n)
        except BudgetExceeded as e:
            raise RuntimeError(f"sub-call budget: {e}") from None

    async def _one(self, prompt: str, sampling_overrides: dict[str, Any], prompt_tokens: int | None) -> str:
        ep = self.episode
        self._count += 1
        call_id = f"{ep.call_prefix}sub-{self._count}"
        params = ep.config.sub_sampling.to_params().replace(**sampling_overrides)
        ceiling = ep.config.sub_sampling.max_tokens
        params = params.replace(max_tokens=self._max_tokens(min(params.max_tokens, ceiling), prompt_tokens))
        messages = [{"role": "user", "content": prompt}]
        sub_tools, turns = self.tools.sub_tools(), None
        if sub_tools:
            messages.insert(0, sub_tools_system_message(sub_tools))
        pool = ep.ledger.pool
        started = time.monotonic()
        async with pool:
            try:
                timeout = max(0.1, min(ep.config.budget.sub_call_timeout_s, pool.seconds_left()))
                # asyncio.timeout, not wait_for: wait_for wraps every call in an extra task.
                async with asyncio.timeout(timeout):
                    if sub_tools:  # the sub-model's tool loop (episode/tools.py)
                        completion, turns, loop_prompt, loop_completion = await generate_with_tools(
                            ep.sub_model, messages, params, self.tools, ep.config.max_sub_tool_turns
                        )
                    else:
                        completion = await ep.sub_model.generate(messages, params)
            except (ModelError, TimeoutError) as e:
                pool.sub_calls_failed += 1
                if isinstance(e, TimeoutError) and pool.seconds_left() <= 0:
                    # The episode's own clock ran out: a budget stop, not the engine's fault.
                    message = f"sub-call {call_id} stopped: the episode's wall-clock budget is spent"
                elif isinstance(e, PromptTooLong):
                    # The engine refused the prompt the model wrote: the model's mistake.
                    message = f"sub-call {call_id}: the prompt does not fit the sub-model's window ({e})"
                else:
                    why = f"no reply within {timeout:.0f} s" if isinstance(e, TimeoutError) else str(e)
                    message = f"sub-call {call_id} failed (infrastructure): {why}"
                    ep.flag_infra(message)
                ep.record.calls.append(self._call_record(call_id, messages, None, started, error=message))
                raise RuntimeError(message) from None
        prompt_tokens = completion.num_prompt_tokens or count_tokens_fallback(prompt)
        completion_tokens = completion.num_completion_tokens or count_tokens_fallback(completion.text)
        if sub_tools:  # every turn of the loop is charged
            prompt_tokens = max(prompt_tokens, loop_prompt)
            completion_tokens = max(completion_tokens, loop_completion)
        ep.ledger.add_sub_tokens(prompt_tokens, completion_tokens)
        call = self._call_record(call_id, messages, completion, started)
        call.tool_turns = turns or None
        ep.record.calls.append(call)
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
        c = completion
        return ModelCall(
            id=call_id,
            role="sub",
            depth=ep.depth,
            parent_id=ep.current_root_call_id,
            messages=messages if ep.config.record_sub_messages else None,
            completion_text=c.text if c else "",
            prompt_token_ids=c.prompt_token_ids if c else None,
            completion_token_ids=c.completion_token_ids if c else None,
            logprobs=c.logprobs if c else None,
            finish_reason=c.finish_reason if c else "error",
            model=c.model if c else getattr(ep.sub_model, "name", ""),
            weight_version=c.weight_version if c else None,
            checkpoint=c.checkpoint if c else None,
            checkpoint_changed=c.checkpoint_changed if c else False,
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
        try:
            value = kind(raw)
        except OverflowError:
            raise ValueError(f"sampling option {key!r} is out of range") from None
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"sampling option {key!r} must be finite, got {raw!r}")
        out[key] = value
    if "max_tokens" in out and out["max_tokens"] <= 0:
        raise ValueError("max_tokens must be positive")
    if "temperature" in out and not 0.0 <= out["temperature"] <= MAX_TEMPERATURE:
        raise ValueError(f"temperature must be between 0 and {MAX_TEMPERATURE}, got {out['temperature']}")
    if "top_p" in out and not 0.0 < out["top_p"] <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {out['top_p']}")
    return out

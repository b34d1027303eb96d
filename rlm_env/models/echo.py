"""Test and CLI doubles that are honest about not being models.

`EchoModel` answers with the last message it was sent (truncated), so plumbing can be tested
and demonstrated without an engine; `InstantModel` answers a fixed short string at once, so
benchmarks of the episode/RPC machinery measure that machinery and not a model. Neither
returns token ids (`token_ids_available` is False and `extras` says why): nothing trains on
their output. Their names ("echo", "instant") end up in every recorded call, so a transcript
never passes for a real model's.
"""

from __future__ import annotations

import time

from .base import Completion, Message, ModelError, SamplingParams, count_tokens_fallback

NO_IDS = "test double: no tokenizer, no token ids"


class EchoModel:
    """Returns the content of the last message, cut to `max_chars` (and to max_tokens, at
    about 4 characters a token)."""

    supports_token_prompts = False

    def __init__(self, max_chars: int = 2000, name: str = "echo"):
        self.max_chars = max_chars
        self.name = name
        self._closed = False

    async def generate(
        self,
        messages: list[Message],
        sampling: SamplingParams,
        *,
        prompt_token_ids: list[int] | None = None,
        session_id: str | None = None,
    ) -> Completion:
        if self._closed:
            raise ModelError(f"{self.name}: client is closed")
        started = time.perf_counter()
        last = messages[-1]["content"] if messages else ""
        limit = min(self.max_chars, sampling.max_tokens * 4)
        text = last[:limit]
        for stop in sampling.stop:
            if stop in text:
                text = text[: text.index(stop)]
        finish_reason = "length" if len(last) > limit and len(text) == limit else "stop"
        return Completion(
            text=text,
            finish_reason=finish_reason,
            model=self.name,
            latency_s=time.perf_counter() - started,
            extras={"token_ids_missing": NO_IDS, "approx_completion_tokens": count_tokens_fallback(text)},
        )

    async def close(self) -> None:
        self._closed = True


class InstantModel:
    """Returns `reply` immediately, whatever it is asked (for RPC and episode benchmarks)."""

    supports_token_prompts = False

    def __init__(self, reply: str = "ok", name: str = "instant"):
        self.reply = reply
        self.name = name
        self.calls = 0

    async def generate(
        self,
        messages: list[Message],
        sampling: SamplingParams,
        *,
        prompt_token_ids: list[int] | None = None,
        session_id: str | None = None,
    ) -> Completion:
        self.calls += 1
        return Completion(
            text=self.reply, finish_reason="stop", model=self.name, extras={"token_ids_missing": NO_IDS}
        )

    async def close(self) -> None:
        pass

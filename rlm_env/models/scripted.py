"""A scripted policy: a test double that replays given root replies.

It is not a model. It exists so the episode loop can be tested fast and deterministically: each
call returns the next reply from a list (or from a function of the messages), and records the
messages it was shown so tests can assert on the observations. No token ids are produced.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable

from rlm_env.models.base import Completion, Message, SamplingParams, count_tokens_fallback


class ScriptExhausted(RuntimeError):
    """The scripted policy was asked for more replies than it was given."""


class ScriptedPolicy:
    """Replays `replies` in order; a reply may be a function of the messages so far."""

    def __init__(
        self,
        replies: Iterable[str | Callable[[list[Message]], str]],
        name: str = "scripted-policy",
        delay_s: float = 0.0,
    ):
        self.name = name
        self._replies = list(replies)
        self._next = 0
        self.delay_s = delay_s
        self.seen: list[list[Message]] = []
        """The messages of every call, for assertions."""

    async def generate(
        self,
        messages: list[Message],
        sampling: SamplingParams,
        *,
        prompt_token_ids: list[int] | None = None,
        session_id: str | None = None,
    ) -> Completion:
        self.seen.append([dict(m) for m in messages])
        if self._next >= len(self._replies):
            raise ScriptExhausted(f"{self.name} has no reply left after {len(self._replies)}")
        reply = self._replies[self._next]
        self._next += 1
        text = reply(messages) if callable(reply) else reply
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        prompt_tokens = sum(count_tokens_fallback(m["content"]) for m in messages)
        return Completion(
            text=text,
            finish_reason="stop",
            model=self.name,
            extras={
                "estimated_prompt_tokens": prompt_tokens,
                "estimated_completion_tokens": count_tokens_fallback(text),
            },
        )

    async def close(self) -> None:
        return None

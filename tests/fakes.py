"""Tiny model doubles for loop tests. Each is named for what it is; none pretends to be a model."""

from __future__ import annotations

import asyncio

from rlm_env.models.base import Completion, ModelError, SamplingParams


class UpperCaseSubModel:
    """Answers a sub-call with its prompt upper-cased (so tests can check routing and order)."""

    name = "uppercase-double"

    def __init__(self, delay_s: float = 0.0, fail_on: str | None = None):
        self.delay_s = delay_s
        self.fail_on = fail_on
        self.calls = 0
        self.in_flight = 0
        self.peak_in_flight = 0

    async def generate(self, messages, sampling: SamplingParams, *, prompt_token_ids=None, session_id=None):
        self.calls += 1
        self.in_flight += 1
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        try:
            if self.delay_s:
                await asyncio.sleep(self.delay_s)
            prompt = messages[-1]["content"]
            if self.fail_on is not None and self.fail_on in prompt:
                raise ModelError("engine refused the request (test double)")
            return Completion(text=prompt.upper(), finish_reason="stop", model=self.name)
        finally:
            self.in_flight -= 1

    async def close(self):
        return None


class TokenizerBackedPolicy:
    """Replays given reply texts but returns real token ids from a tokenizer, as an engine would
    (completion = ids of the text + the end token). Used to test the token-in/token-out transcript
    without starting vLLM."""

    name = "tokenizer-backed-script"
    supports_token_prompts = True

    def __init__(self, tokenizer, replies: list[str]):
        self.tokenizer = tokenizer
        self.replies = list(replies)
        self.prompts: list[list[int]] = []

    async def generate(self, messages, sampling, *, prompt_token_ids=None, session_id=None):
        assert prompt_token_ids is not None, "the episode should feed token ids to a token-capable engine"
        self.prompts.append(list(prompt_token_ids))
        text = self.replies.pop(0)
        ids = self.tokenizer.encode(text, add_special_tokens=False) + [self.tokenizer.eos_token_id]
        return Completion(
            text=text,
            finish_reason="stop",
            prompt_token_ids=list(prompt_token_ids),
            completion_token_ids=ids,
            logprobs=[-0.5] * len(ids),
            model=self.name,
        )

    async def close(self):
        return None


def repl(code: str) -> str:
    """A reply holding one ```repl block."""
    return f"Let me run this.\n```repl\n{code}\n```\n"

"""The root transcript, kept append-only in messages and in token ids.

Trainers must train on exactly what was sampled. Re-rendering the chat at the end and
re-tokenizing it ("retokenization drift") gives different ids than the sampler produced and broke
PPO in other frameworks, so when the root engine has a tokenizer and takes token-id prompts, we
build each turn's prompt as ids: the previous prompt, plus the ids the model sampled (mask 1),
plus the ids of the template text and the observation that follow them (mask 0). The template
text between turns is found by rendering the chat template and cutting at the sampled text; when
the template does not render the sampled text verbatim (it strips or rewrites assistant
messages), we fall back to rendering the whole chat and mark the sample inconsistent.

Without a tokenizer (a scripted policy, an HTTP server without token ids), only messages are
kept and `RootSample.available` stays False.
"""

from __future__ import annotations

from typing import Any

from rlm_env.episode.record import RootSample
from rlm_env.models.base import Completion, Message


class RootTranscript:
    def __init__(self, messages: list[Message], tokenizer: Any | None):
        self.messages: list[Message] = list(messages)
        self.tokenizer = tokenizer
        self.sample = RootSample(available=tokenizer is not None)
        self._prompt_ids: list[int] | None = None
        self._sampled_text = ""
        if tokenizer is not None:
            self._prompt_ids = self._render_ids(self.messages)
            self.sample.token_ids = list(self._prompt_ids)
            self.sample.loss_mask = [0] * len(self._prompt_ids)
            self.sample.logprobs = [None] * len(self._prompt_ids)

    # -- what the next call is fed ------------------------------------------------------------
    def prompt_token_ids(self) -> list[int] | None:
        return list(self._prompt_ids) if self._prompt_ids is not None else None

    def prompt_length(self) -> int:
        """Tokens of the next prompt (an estimate of 4 characters a token without a tokenizer)."""
        if self._prompt_ids is not None:
            return len(self._prompt_ids)
        return sum(len(m["content"]) for m in self.messages) // 4

    # -- appending ----------------------------------------------------------------------------
    def add_reply(self, completion: Completion) -> None:
        """Append the root model's reply exactly as sampled."""
        self.messages.append({"role": "assistant", "content": completion.text})
        if self._prompt_ids is None:
            return
        if completion.prompt_token_ids is not None and completion.prompt_token_ids != self._prompt_ids:
            # The engine consumed something else than what we built: keep the engine's ids.
            self.sample.consistent = False
            self._prompt_ids = list(completion.prompt_token_ids)
            self._reset_sample_to(self._prompt_ids)
        ids = completion.completion_token_ids
        if ids is None:
            # The engine stopped returning ids; the sample can no longer be trusted.
            self.sample.available = False
            self._prompt_ids = None
            return
        # No logprobs from the engine: store them as absent, never as 0.0 (which would read as
        # probability 1 and silently corrupt an importance ratio).
        logprobs = completion.logprobs if completion.logprobs is not None else []
        logprobs = [float(x) for x in logprobs[: len(ids)]] + [None] * max(0, len(ids) - len(logprobs))
        self._sampled_text = self._decode(ids)
        self._prompt_ids = self._prompt_ids + list(ids)
        self.sample.token_ids.extend(ids)
        self.sample.loss_mask.extend([1] * len(ids))
        self.sample.logprobs.extend(logprobs)

    def add_observation(self, text: str) -> None:
        """Append a user message (REPL output) and the generation prompt after it."""
        before = self.messages
        self.messages = before + [{"role": "user", "content": text}]
        if self._prompt_ids is None:
            return
        full = self._render_text(self.messages, add_generation_prompt=True)
        sampled_upto = self._render_text(before[:-1], add_generation_prompt=True) + self._sampled_text
        if full.startswith(sampled_upto):
            delta = self.tokenizer.encode(full[len(sampled_upto) :], add_special_tokens=False)
            self._prompt_ids = self._prompt_ids + delta
            self.sample.token_ids.extend(delta)
            self.sample.loss_mask.extend([0] * len(delta))
            self.sample.logprobs.extend([None] * len(delta))
        else:
            # The template rewrote the assistant message: render the whole chat (drift possible).
            self.sample.consistent = False
            self._prompt_ids = self._render_ids(self.messages)
            self._reset_sample_to(self._prompt_ids)

    # -- helpers ------------------------------------------------------------------------------
    def _reset_sample_to(self, ids: list[int]) -> None:
        """Keep the masked record aligned with ids we no longer built ourselves."""
        n = len(self.sample.token_ids)
        if ids[:n] == self.sample.token_ids:
            extra = ids[n:]
            self.sample.token_ids.extend(extra)
            self.sample.loss_mask.extend([0] * len(extra))
            self.sample.logprobs.extend([None] * len(extra))
        else:
            self.sample.token_ids = list(ids)
            self.sample.loss_mask = [0] * len(ids)
            self.sample.logprobs = [None] * len(ids)

    def _render_text(self, messages: list[Message], add_generation_prompt: bool) -> str:
        return self.tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=add_generation_prompt
        )

    def _render_ids(self, messages: list[Message]) -> list[int]:
        text = self._render_text(messages, add_generation_prompt=True)
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=False)

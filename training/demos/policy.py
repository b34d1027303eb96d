"""The expert as a root policy: scripted replies with the token ids a real engine would return.

`ExpertPolicy` stands where the root model stands in an `Episode`. For each episode (keyed by
the session id the episode passes, its episode id) it starts one *script*: a Python generator
that yields a reply, receives the next observation (the last user message), and yields the
next reply, so a reply may depend on everything the REPL printed so far. The question is read
from the root prompt the episode built, exactly as a model would read it; the expert never
sees the task's expected answer.

Each reply is returned as an engine would return it: the prompt ids the episode fed, the reply's
ids under the default model's tokenizer plus the end-of-turn token, and no logprobs (the text
was not sampled by a model, so there is no sampling probability to report). The episode's
transcript then holds a root sample with the loss mask on exactly those ids: what a trainer
reads through `training.samples.samples_from_records`. Every call is recorded under the model
name "scripted-expert/<strategy>", so demonstrations are always recognisable as such.

A reply longer than the episode's `max_tokens` could never have been sampled under that
config; it raises `DemoTooLong` (the episode records an infrastructure failure and the
trainer drops it) rather than being silently cut.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Generator
from typing import Any

from rlm_env.models.base import Completion, Message, SamplingParams

Script = Generator[str, str, None]
"""Yields replies; receives each following observation through `send`."""
ScriptFactory = Callable[[str, str], tuple[str, Script]]
"""(episode id, question) -> (strategy name, script)."""

POLICY_PREFIX = "scripted-expert"

_QUESTION = re.compile(r"\nQuestion: (.*?)\n\nReply with a ```repl block", re.S)


class DemoTooLong(RuntimeError):
    """An expert reply has more tokens than the episode lets one root call sample."""


class DemoScriptEnded(RuntimeError):
    """The expert's script ended without answering (a bug in the expert, not a model error)."""


def question_from_prompt(messages: list[Message]) -> str:
    """The question as the root prompt states it (the user message that opens the episode)."""
    for message in messages:
        if message["role"] == "user":
            m = _QUESTION.search("\n" + message["content"])
            if m:
                return m.group(1).strip()
    raise ValueError("no 'Question: ...' in the root prompt")


class ExpertPolicy:
    """A root policy that plays expert scripts, one per episode, returning real token ids."""

    supports_token_prompts = True

    def __init__(self, tokenizer: Any, scripts: ScriptFactory, family: str):
        self.tokenizer = tokenizer
        self.name = f"{POLICY_PREFIX}/{family}"
        self._scripts = scripts
        self._running: dict[str, tuple[str, Script]] = {}
        self.strategies: dict[str, str] = {}
        """Episode id -> the strategy its script followed."""

    async def generate(
        self,
        messages: list[Message],
        sampling: SamplingParams,
        *,
        prompt_token_ids: list[int] | None = None,
        session_id: str | None = None,
    ) -> Completion:
        if prompt_token_ids is None:
            raise ValueError("the expert answers token prompts only (its records must carry ids)")
        episode = session_id or "episode"
        if episode not in self._running:
            strategy, script = self._scripts(episode, question_from_prompt(messages))
            self._running[episode] = (strategy, script)
            self.strategies[episode] = strategy
            reply = next(script, None)
        else:
            strategy, script = self._running[episode]
            try:
                reply = script.send(messages[-1]["content"])
            except StopIteration:
                reply = None
        if reply is None:
            raise DemoScriptEnded(f"expert {strategy} ended episode {episode} without FINAL")
        ids = self.tokenizer.encode(reply, add_special_tokens=False) + [self.tokenizer.eos_token_id]
        if len(ids) > sampling.max_tokens:
            raise DemoTooLong(
                f"expert {strategy} reply of {len(ids)} tokens > max_tokens {sampling.max_tokens}"
            )
        return Completion(
            text=reply,
            finish_reason="stop",
            prompt_token_ids=list(prompt_token_ids),
            completion_token_ids=ids,
            logprobs=None,
            model=f"{POLICY_PREFIX}/{strategy}",
        )

    def forget(self, episode_id: str) -> None:
        """Drop an episode's script (after it finished)."""
        self._running.pop(episode_id, None)

    async def close(self) -> None:
        self._running.clear()

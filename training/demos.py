"""Scripted demonstrations for SFT, produced through the real episode loop.

`ScriptedTokenPolicy` stands in for the root model: its replies come from a function of the
messages (a scripted solver), and it returns the token ids of each reply from the policy's own
tokenizer (ids of the text plus the end token), as an engine would. The episode then builds the
root transcript token-in/token-out, with its loss mask, exactly as for a sampled episode, and the
sandbox really runs the scripted code, so the record shows a real, scored solution. Logprobs are
None: nothing was sampled, so these samples are SFT data only (never importance-weighted).

Only the S-NIAH family has a scripted solver here (`niah_reply`): it reads the key from the
question and writes REPL code that finds the needle's paragraph and answers with FINAL.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from rlm_env.models.base import Completion, Message, SamplingParams

NEEDLE_PATTERNS = (r'"([^"]+)"', r"\b([A-Z]\d-[A-Z]{2}\d{2})\b", r"\b(\d{7})\b")


def niah_reply(messages: list[Message]) -> str:
    """One reply that solves an S-NIAH task with code (search, then a regex on the paragraph)."""
    user = next(m["content"] for m in messages if m["role"] == "user")
    question = user.rsplit("Question:", 1)[-1]  # the context's prefix comes before the question
    match = re.search(r"\b([a-z]+-[a-z]+)\b", question)
    key = match.group(1) if match else ""
    return (
        f"The key is {key}. I will find the paragraph that mentions it and read the value.\n"
        "```repl\n"
        "import re\n"
        f'key = "{key}"\n'
        'paras = [p for p in context.split("\\n\\n") if re.search(r"(?<![\\w-])" + re.escape(key) + r"(?![\\w-])", p)]\n'
        "print(len(paras), paras[0][:300] if paras else None)\n"
        "value = None\n"
        f"for pattern in {NEEDLE_PATTERNS!r}:\n"
        "    found = re.search(pattern, paras[0]) if paras else None\n"
        "    if found:\n"
        "        value = found.group(1)\n"
        "        break\n"
        "FINAL(value)\n"
        "```"
    )


SOLVERS: dict[str, Callable[[list[Message]], str]] = {"niah": niah_reply}


class ScriptedTokenPolicy:
    """A scripted root 'model' with real token ids from `tokenizer` (see the module docstring)."""

    supports_token_prompts = True

    def __init__(self, tokenizer: Any, reply: Callable[[list[Message]], str], name: str = "scripted-demo"):
        self.tokenizer = tokenizer
        self.reply = reply
        self.name = name

    async def generate(
        self,
        messages: list[Message],
        sampling: SamplingParams,
        *,
        prompt_token_ids: list[int] | None = None,
        session_id: str | None = None,
    ) -> Completion:
        text = self.reply(messages)
        ids = self.tokenizer.encode(text, add_special_tokens=False) + [self.tokenizer.eos_token_id]
        return Completion(
            text=text,
            finish_reason="stop",
            prompt_token_ids=list(prompt_token_ids) if prompt_token_ids is not None else None,
            completion_token_ids=ids,
            logprobs=None,
            model=self.name,
        )

    async def close(self) -> None:
        return None

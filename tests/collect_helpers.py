"""A scripted root for collection tests and the scripted-root throughput figure.

`ProbingRoot` is not a model: it answers from a fixed plan, as a function of the transcript.
Turn 0 prints the context's size and a slice, asks one `llm_query` about a slice, and (when
`child=True`) one `rlm_query`; turn 1 answers a niah question by regex. A child episode (its
question is the child marker) answers with a slice of its context. With a tokenizer it returns
real token ids (the encoded reply plus the end token, logprob -0.5 each) so root samples are
available and the trainable filter has something to keep. `__main__` runs one collect worker
in a subprocess (used by the kill test).
"""

from __future__ import annotations

import asyncio
import json
import re
import sys

from rlm_env.episode.subcalls import CHILD_QUESTION
from rlm_env.models.base import Completion

PROBE = (
    "Let me look at the context.\n```repl\nprint(len(context))\nprint(context[:120])\n"
    "s = llm_query('Summarize in five words: ' + context[:200])\nprint(s[:80])\n{child}```\n"
)
ANSWER = (  # answers number needles only (the line that names the key, its 7-digit number)
    "Now I answer.\n```repl\nimport re\nq = {question!r}\nkey = re.search(r'\\b([a-z]+-[a-z]+)\\b', q)\n"
    "line = next((x for x in context.splitlines() if key and re.search(r'\\b' + re.escape(key.group(1)) + r'\\b', x)), '')\n"
    "m = re.search(r'\\b(\\d{{7}})\\b', line) if 'number' in q else None\n"
    "FINAL(m.group(1) if m else 'unknown')\n```\n"
)


def plan(messages: list[dict], child: bool) -> str:
    question = messages[1]["content"] if len(messages) > 1 else ""
    if CHILD_QUESTION in question:
        return "```repl\nFINAL(context[:24])\n```\n"
    turns = sum(1 for m in messages if m["role"] == "assistant")
    if turns == 0:
        return PROBE.format(
            child="r = rlm_query('Say the first word of: ' + context[:60])\nprint(r)\n" if child else ""
        )
    asked = re.search(r"Question: (.*)", question)
    return ANSWER.format(question=asked.group(1) if asked else "")


class ProbingRoot:
    """The plan above; with `tokenizer`, token-in/token-out like an engine."""

    name = "probing-script"

    def __init__(self, tokenizer=None, child: bool = False, delay_s: float = 0.0):
        self.tokenizer = tokenizer
        self.child = child
        self.delay_s = delay_s
        self.supports_token_prompts = tokenizer is not None

    async def generate(self, messages, sampling, *, prompt_token_ids=None, session_id=None):
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        text = plan(messages, self.child)
        if self.tokenizer is None or prompt_token_ids is None:
            return Completion(text=text, finish_reason="stop", model=self.name)
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


def scripted_models(config=None, delay_s: float = 0.0, child: bool = True):
    """(root, sub) for collect's `make_models`: the probing root with the default model's
    tokenizer, and the upper-casing sub-model double."""
    from transformers import AutoTokenizer

    from rlm_env.models.default_model import ensure_default_model
    from tests.fakes import UpperCaseSubModel

    tokenizer = AutoTokenizer.from_pretrained(ensure_default_model())
    return ProbingRoot(tokenizer, child=child, delay_s=delay_s), UpperCaseSubModel()


def slow_scripted_models(config=None):
    return scripted_models(config, delay_s=0.4)


if (
    __name__ == "__main__"
):  # python -m tests.collect_helpers '<CollectConfig json>' '<episode overrides json>'
    from rlm_env.collect.run import CollectConfig, run_worker
    from rlm_env.episode.config import config_from_dict

    config = CollectConfig.model_validate_json(sys.argv[1])
    episode = config_from_dict({}, json.loads(sys.argv[2]))
    print("collected", run_worker(config, episode, slow_scripted_models), flush=True)

"""Custom tools end to end on the real engine: a scripted root calls a root tool in the real bwrap
sandbox, and its sub-calls run on the default model through vLLM with sub-model tools declared,
so the Hermes tool loop runs on whatever the real model writes. Nothing depends on the model's
wording: the loop must end within its turn cap and every turn must be in the record. (That a
tool is actually used when a model asks for it is shown with a scripted sub-model in
test_tools.py; a 135M model may or may not ask.)"""

from __future__ import annotations

import pytest

from rlm_env.episode import Episode
from rlm_env.episode.config import config_from_dict
from rlm_env.episode.tools import parse_tool_call
from rlm_env.models.scripted import ScriptedPolicy
from rlm_env.tasks.base import Task
from tests.fakes import repl

pytestmark = [pytest.mark.engine, pytest.mark.slow]

TASK = Task(id="tools-e2e", context="one two three four", question="How many words?")
ASK = 'Reply with exactly this and nothing else: <tool_call>{"name": "add", "arguments": {"a": 2, "b": 3}}</tool_call>'


async def test_sub_model_tool_loop_on_the_real_engine(vllm_client):
    cfg = config_from_dict(
        {
            "sub_sampling": {"max_tokens": 40, "temperature": 0.0},
            "max_sub_tool_turns": 2,
            "tools": [
                {"function": "rlm_env.tools.examples:word_count", "description": "count words"},
                {"function": "rlm_env.tools.examples:add", "scope": "sub", "description": "a + b"},
            ],
        }
    )
    code = f"n = word_count(context)\nreplies = llm_batch([{ASK!r}, 'What is 2 + 3? Use the add tool.'])\nFINAL([n, replies])"
    record = await Episode(TASK, cfg, ScriptedPolicy([repl(code)]), vllm_client).run()
    assert not record.flags.infra_failure, record.flags
    assert record.answer.status == "confirmed" and record.answer.content[0] == 4
    assert [c.tool for c in record.tool_calls] == ["word_count"] and record.tool_calls[0].result == 4
    subs = [c for c in record.calls if c.role == "sub"]
    assert len(subs) == 2
    print("tool turns per sub-call on the real model:", [len(c.tool_turns or []) for c in subs])
    for call in subs:
        turns = call.tool_turns or []
        assert len(turns) <= 2  # the turn cap held
        assert call.messages[0]["role"] == "system" and "<tool_call>" in call.messages[0]["content"]
        assert len(call.messages) == 2 + 2 * len(turns)  # each turn: the model's call, the tool's response
        for turn in turns:
            assert parse_tool_call(turn["completion_text"]) is not None
            assert ("result" in turn) != ("error" in turn)
        if len(turns) < 2:  # the loop ended because the model stopped calling tools
            assert parse_tool_call(call.completion_text) is None
        assert call.completion_token_ids and call.num_completion_tokens > 0

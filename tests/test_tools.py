"""Custom tools called by a scripted root's code on the real sandbox: the result's round trip,
per-tool budgets, timeouts, size limits, non-JSON results, a raising tool, all as catchable
ToolError in the REPL and all in the record; plus config-time refusals and the sub-model tool
loop with a scripted sub-model (the real-engine loop is in test_tools_engine.py)."""

from __future__ import annotations

import pytest

from rlm_env.episode import Episode
from rlm_env.episode.config import config_from_dict
from rlm_env.episode.tools import parse_tool_call
from rlm_env.models.base import Completion
from rlm_env.models.scripted import ScriptedPolicy
from rlm_env.tasks.base import Task
from tests import tool_fns
from tests.fakes import UpperCaseSubModel, repl

TASK = Task(id="t", context="one two three", question="q?", expected_answer="3", scorer="exact")


def tool(fn: str, **kw) -> dict:
    return {"function": f"tests.tool_fns:{fn}", **kw}


def config(tools, **overrides):
    return config_from_dict({"sandbox": {"cell_timeout_s": 10}, "tools": tools}, overrides)


async def run(code: str, tools, sub=None, **overrides):
    policy = ScriptedPolicy([repl(code)])
    episode = Episode(TASK, config(tools, **overrides), policy, sub or UpperCaseSubModel())
    return await episode.run()


async def test_tool_result_round_trips_and_is_recorded():
    code = (
        "r = remember(1, 'two', k={'a': [1.5, None]})\n"
        "n = word_count(context)\n"
        "FINAL([r, n, remember.__name__, sorted(SHOW_VARS())])"
    )
    tools = [tool("remember", description="echo"), {"function": "rlm_env.tools.examples:word_count"}]
    record = await run(code, tools)
    assert record.answer.content == [
        {"args": [1, "two"], "kwargs": {"k": {"a": [1.5, None]}}},
        3,
        "remember",
        ["n", "r"],  # the stubs are helpers, not the user's variables
    ]
    assert [c.tool for c in record.tool_calls] == ["remember", "word_count"]
    first = record.tool_calls[0]
    assert first.args == [1, "two"] and first.kwargs == {"k": {"a": [1.5, None]}}
    assert first.result == {"args": [1, "two"], "kwargs": {"k": {"a": [1.5, None]}}} and first.error is None
    assert first.cell == 0 and first.parent_id == record.calls[0].id and first.duration_s >= 0
    assert (
        "remember" in record.root_messages[0]["content"] and "ToolError" in record.root_messages[0]["content"]
    )
    assert not record.flags.infra_failure


FAILURES = [
    ("budget", tool("remember", max_calls=2), "remember(); remember(); remember()", "call budget spent"),
    ("timeout", tool("sleep_for", timeout_s=0.3), "sleep_for(1.0)", "timeout"),
    ("big args", tool("remember", max_arg_bytes=100), "remember('y' * 500)", "limit is 100"),
    ("big result", tool("returns_big", max_result_bytes=1000), "returns_big(5000)", "limit is 1,000"),
    ("non-JSON set", tool("returns_a_set"), "returns_a_set()", "not JSON"),
    ("NaN", tool("returns_nan"), "returns_nan()", "not JSON"),
    ("raises", tool("always_raises"), "always_raises('bad input 42')", "ValueError: bad input 42"),
    ("bad arity", tool("returns_a_set"), "returns_a_set(1, 2)", "TypeError"),
    ("non-JSON arg", tool("remember"), "remember({1, 2})", "JSON"),
]


@pytest.mark.parametrize(("what", "spec", "call", "expected"), FAILURES, ids=[f[0] for f in FAILURES])
async def test_tool_failures_are_catchable_tool_errors_and_recorded(what, spec, call, expected):
    code = (
        f"try:\n    {call}\n    FINAL('no error')\nexcept ToolError as e:\n    FINAL('ToolError: ' + str(e))"
    )
    record = await run(code, [spec])
    assert record.answer.content.startswith("ToolError: "), record.answer.content
    assert expected in record.answer.content
    if what != "non-JSON arg":  # refused inside the REPL: it never left the sandbox
        assert record.tool_calls[-1].error is not None and expected in record.tool_calls[-1].error
    assert not record.flags.infra_failure and not any(c.protocol_violation for c in record.cells)


async def test_budget_is_per_tool_and_the_function_runs_only_within_it():
    tool_fns.CALLS.clear()
    code = "out = []\nfor i in range(4):\n    try:\n        out.append(remember(i))\n    except ToolError:\n        out.append('refused')\nFINAL(len([o for o in out if o == 'refused']))"  # noqa: E501
    record = await run(code, [tool("remember", max_calls=3)])
    assert record.answer.content == 1 and len(tool_fns.CALLS) == 3
    assert [c.error is None for c in record.tool_calls] == [True, True, True, False]


async def test_a_sub_scope_tool_has_no_repl_stub():
    record = await run("FINAL('remember' in dir())", [tool("remember", scope="sub")])
    assert record.answer.content is False


@pytest.mark.parametrize(
    ("tools", "message"),
    [
        ([tool("remember", name="llm_query")], "shadow"),
        ([tool("remember", name="context")], "shadow"),
        ([tool("remember"), tool("remember")], "unique"),
        ([{"function": "tests.tool_fns:no_such_function"}], "cannot be loaded"),
        ([{"function": "os.system"}], "pkg.module:function"),
        ([tool("remember", name="bad name")], "identifier"),
    ],
)
def test_bad_tool_configs_are_refused_at_load(tools, message):
    with pytest.raises(ValueError, match=message):
        config(tools)


def test_hermes_tool_call_parsing():
    assert parse_tool_call('x <tool_call>{"name": "add", "arguments": {"a": 1}}</tool_call>') == {
        "name": "add",
        "arguments": {"a": 1},
    }
    assert parse_tool_call("<tool_call>{not json}</tool_call>") is None
    assert parse_tool_call("no call here") is None


CALL = '<tool_call>{"name": "add", "arguments": {"a": 2, "b": 40}}</tool_call>'


class ToolUsingSubModel:
    """Calls `add` with the numbers it is given the first time, then answers with the tool's result."""

    name = "tool-using-double"

    def __init__(self, always_call: bool = False):
        self.always_call = always_call
        self.seen: list[list[dict]] = []

    async def generate(self, messages, sampling, *, prompt_token_ids=None, session_id=None):
        self.seen.append(list(messages))
        last = messages[-1]["content"]
        if last.startswith("<tool_response>") and not self.always_call:
            result = last.removeprefix("<tool_response>").removesuffix("</tool_response>")
            return Completion(text="The sum is " + result, finish_reason="stop")
        return Completion(text=CALL, finish_reason="stop")

    async def close(self):
        return None


async def test_sub_model_tool_loop_runs_the_tool_and_records_its_turns():
    sub = ToolUsingSubModel()
    tools = [{"function": "rlm_env.tools.examples:add", "scope": "sub"}]
    record = await run("FINAL(llm_query('add 2 and 40'))", tools, sub=sub)
    assert record.answer.content == "The sum is 42"
    (call,) = [c for c in record.calls if c.role == "sub"]
    assert call.tool_turns is not None and len(call.tool_turns) == 1
    turn = call.tool_turns[0]
    assert turn["tool"] == "add" and turn["arguments"] == {"a": 2, "b": 40} and turn["result"] == 42
    assert [m["role"] for m in call.messages] == ["system", "user", "assistant", "user"]
    assert "add" in call.messages[0]["content"] and record.tool_calls == []


async def test_sub_model_tool_loop_stops_at_its_turn_cap_and_the_tool_budget():
    sub = ToolUsingSubModel(always_call=True)
    tools = [{"function": "rlm_env.tools.examples:add", "scope": "sub", "max_calls": 2}]
    record = await run("FINAL(llm_query('add'))", tools, sub=sub, max_sub_tool_turns=3)
    (call,) = [c for c in record.calls if c.role == "sub"]
    assert len(sub.seen) == 4  # 3 tool turns, then the final reply is taken as it is
    assert [t.get("error") is None for t in call.tool_turns] == [True, True, False]
    assert "budget" in call.tool_turns[-1]["error"] and "<tool_call>" in record.answer.content


def test_the_example_config_loads_and_the_prompt_lists_root_tools_only():
    from rlm_env.episode.config import load_config
    from rlm_env.episode.prompt import build_root_messages

    cfg = load_config("configs/tools.toml")
    assert [(t.tool_name, t.scope) for t in cfg.tools] == [
        ("word_count", "root"),
        ("numbers_in", "both"),
        ("add", "sub"),
    ]
    system = build_root_messages("q", {}, cfg)[0]["content"]
    assert "`word_count(text: str) -> int`" in system and "numbers_in(" in system and "`add(" not in system

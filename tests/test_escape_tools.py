"""Escape suite, part: custom tools. Model-written code attacks the tool path through the real
bwrap sandbox: hostile arguments, names that are not declared tools, frames written straight to
the host's socket (forged, malformed, nested past any parser), oversized values both ways. Each
must fail for the model (a ToolError in the REPL, or a protocol violation that restarts the
worker), run nothing undeclared, and never be labelled an infrastructure failure."""

from __future__ import annotations

import pytest

from rlm_env.episode import Episode
from rlm_env.episode.config import config_from_dict
from rlm_env.models.scripted import ScriptedPolicy
from rlm_env.tasks.base import Task
from tests import tool_fns
from tests.fakes import UpperCaseSubModel, repl
from tests.sandbox_helpers import needs_bwrap
from tests.test_escape_network_protocol import FIND_SOCKET

pytestmark = needs_bwrap
TASK = Task(id="t", context="ctx", question="q?", expected_answer="x", scorer="exact")
TOOLS = [{"function": "tests.tool_fns:remember", "max_arg_bytes": 10_000, "max_calls": 5}]


async def run(*codes: str):
    tool_fns.CALLS.clear()
    cfg = config_from_dict(
        {"sandbox": {"cell_timeout_s": 10}, "tools": TOOLS, "budget": {"max_root_turns": 3}}
    )
    policy = ScriptedPolicy([repl(c) for c in codes] + [repl("FINAL('done')")])
    record = await Episode(TASK, cfg, policy, UpperCaseSubModel()).run()
    assert not record.flags.infra_failure and not record.flags.infra_errors, record.flags
    return record


def forge(frame: str) -> str:
    """Code writing `frame` (a Python expression for a dict) to the socket and printing the reply."""
    return (
        FIND_SOCKET + f"msg = json.dumps({frame}).encode()\n"
        "os.write(SOCK, struct.pack('>I', len(msg)) + msg)\n"
        "n = struct.unpack('>I', os.read(SOCK, 4))[0]\nprint(json.loads(os.read(SOCK, n)))"
    )


@pytest.mark.parametrize(
    "name", ["os:system", "__import__", "tests.tool_fns:remember", "ToolRunner", "resolve", "sleep_for"]
)
async def test_a_forged_frame_runs_only_declared_tools(name):
    record = await run(
        forge(
            f"{{'op': 'call', 'id': 77, 'fn': 'tool', 'args': {{'name': {name!r}, 'args': ['id'], 'kwargs': {{}}}}}}"
        )
    )
    out = record.cells[0].output
    assert "'ok': False" in out and ("no tool named" in out or "not a tool name" in out), out
    assert tool_fns.CALLS == [] and not record.cells[0].protocol_violation


async def test_a_forged_frame_to_a_declared_tool_is_served_like_the_stub():
    record = await run(
        forge(
            "{'op': 'call', 'id': 5, 'fn': 'tool', 'args': {'name': 'remember', 'args': [1], 'kwargs': {'b': 2}}}"
        )
    )
    assert "'ok': True" in record.cells[0].output and tool_fns.CALLS == [((1,), {"b": 2})]
    assert record.tool_calls[0].args == [1] and record.tool_calls[0].kwargs == {"b": 2}


@pytest.mark.parametrize(
    "args",
    [
        "{'name': 'remember', 'args': 'not a list', 'kwargs': {}}",
        "{'name': 'remember', 'args': [], 'kwargs': [1]}",
        "{'name': 'remember', 'args': [], 'kwargs': {}, 'run_as': 'root'}",
        "{'name': 5, 'args': [], 'kwargs': {}}",
    ],
    ids=["args-not-list", "kwargs-not-object", "extra-key", "name-not-str"],
)
async def test_malformed_tool_arguments_are_refused_before_the_tool(args):
    record = await run(forge(f"{{'op': 'call', 'id': 9, 'fn': 'tool', 'args': {args}}}"))
    assert "'ok': False" in record.cells[0].output and tool_fns.CALLS == []
    assert not record.cells[0].protocol_violation


@pytest.mark.parametrize(
    "frame",
    [
        "{'op': 'call', 'id': -1, 'fn': 'tool', 'args': {'name': 'remember', 'args': [], 'kwargs': {}}}",
        "{'op': 'call', 'id': 1, 'fn': 'tool', 'args': {}, 'sudo': True}",
        "{'op': 'call', 'id': 1, 'fn': 'tool' * 100, 'args': {}}",
        "{'op': 'call', 'id': 1, 'fn': 'tool', 'args': ['remember']}",
    ],
    ids=["negative-id", "unknown-frame-key", "long-fn", "args-not-an-object"],
)
async def test_malformed_tool_frames_are_the_models_protocol_violation(frame):
    record = await run(forge(frame), "FINAL(remember('after restart'))")
    first = record.cells[0]
    assert first.protocol_violation and first.worker_restarted and "ProtocolViolation" in first.error
    # the new worker has its stubs again, and the episode goes on
    assert record.answer.content == {"args": ["after restart"], "kwargs": {}}


async def test_arguments_nested_past_the_parser_are_a_protocol_violation():
    deep = "'[' * 200000 + ']' * 200000"
    code = FIND_SOCKET + (
        'msg = (\'{"op": "call", "id": 3, "fn": "tool", "args": {"name": "remember", "args": \' + '
        f"{deep} + ', \"kwargs\": {{}}}}}}').encode()\n"
        "os.write(SOCK, struct.pack('>I', len(msg)) + msg)\nimport time\ntime.sleep(5)"
    )
    record = await run(code)
    assert record.cells[0].protocol_violation and tool_fns.CALLS == []


async def test_hostile_arguments_through_the_stub_fail_in_the_repl():
    code = (
        "errs = []\n"
        "class Evil:\n    def __reduce__(self): return (os.system, ('touch /tmp/pwned',))\n"
        "import os\n"
        "deep = []\nfor _ in range(100000): deep = [deep]\n"
        "for args in [(Evil(),), (deep,), ('x' * 20000,), (float('nan'),)]:\n"
        "    try:\n        remember(*args)\n        errs.append('ran')\n"
        "    except ToolError as e:\n        errs.append(str(e)[:200])\n"
        "try:\n    remember(**{'a' * 200: 1, 'b': b'bytes'})\nexcept ToolError as e:\n    errs.append(str(e)[:200])\n"
        "FINAL(errs)"
    )
    record = await run(code)
    errs = record.answer.content
    assert len(errs) == 5 and "ran" not in errs[:2] and "limit is 10,000" in errs[2], errs
    assert all("JSON" in errs[i] for i in (0, 1, 3, 4)), errs  # objects, depth, NaN, bytes
    assert tool_fns.CALLS == [] and not record.cells[0].protocol_violation


async def test_an_oversized_tool_result_never_reaches_the_sandbox():
    cfg = [{"function": "tests.tool_fns:returns_big", "max_result_bytes": 1_000_000}]
    tool_fns.CALLS.clear()
    config = config_from_dict({"sandbox": {"cell_timeout_s": 10}, "tools": cfg})
    code = "try:\n    returns_big(5_000_000)\nexcept ToolError as e:\n    FINAL(str(e))"
    record = await Episode(TASK, config, ScriptedPolicy([repl(code)]), UpperCaseSubModel()).run()
    assert "limit is 1,000,000" in record.answer.content and not record.flags.infra_failure
    assert record.tool_calls[0].result is None and "5,000,002" in record.tool_calls[0].error

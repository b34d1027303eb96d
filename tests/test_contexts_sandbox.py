"""Issue 14 on the real sandbox: several contexts, host-bound variables (conversations), top-level
`await` with async sub-calls, and escape tests for the frames they use."""

# ruff: noqa: F811 - pytest fixtures imported from tests.sandbox_helpers are test arguments

from __future__ import annotations

import pytest

from rlm_env.sandbox import Sandbox, prepare_context
from tests.sandbox_helpers import FAST, RecordingHandler, assert_host_intact, canary, sandboxes  # noqa: F401
from tests.test_escape_network_protocol import FIND_SOCKET

BIG = "caf\u00e9 \u2014 line\n" * 8000  # 2-byte layout, > 64 KiB: mapped over the page cache


async def test_several_contexts_are_bound_and_survive_a_restart(tmp_path):
    store = tmp_path / "store"
    parts = [prepare_context(v, store_dir=store) for v in (BIG, ["a", "bb"], {"k": "v"}, "tiny")]
    sb = await Sandbox.start(FAST, parts[0], RecordingHandler(), more_contexts=tuple(parts[1:]))
    try:
        check = (
            "[type(context_0).__name__, type(context_1).__name__, type(context_2).__name__, context_3, "
            "context is context_0, len(context_0), context_1, context_2]"
        )
        want = repr(["str", "list", "dict", "tiny", True, len(BIG), ["a", "bb"], {"k": "v"}]) + "\n"
        r = await sb.run_cell(check)
        assert r.output == want, r
        assert sb.layers["context_shared"] is True  # the first, large text is mapped, not copied
        r = await sb.run_cell("import os; os._exit(3)")
        assert r.worker_restarted
        r = await sb.run_cell(check)
        assert r.output == want, r  # the fresh worker got every context again
    finally:
        await sb.close()


async def test_one_context_binds_no_numbered_names(sandboxes):
    sb = await sandboxes(context="only")
    r = await sb.run_cell("'context_0' in globals(), context")
    assert r.output == "(False, 'only')\n", r


async def test_top_level_await_overlaps_code_and_keeps_issue_order(sandboxes):
    handler = RecordingHandler(delay=0.05)
    sb = await sandboxes(handler=handler)
    r = await sb.run_cell(
        "import asyncio\n"
        "tasks = [asyncio.ensure_future(llm_query_async(f'q{i}')) for i in range(4)]\n"
        "own = sum(range(1000))  # runs while the host serves the calls\n"
        "answers = await asyncio.gather(*tasks)\n"
        "batch = await llm_batch_async(['x', 'y'])\n"
        "answers, batch, own"
    )
    assert r.error is None, r
    assert r.output == "(['llm_query:q0', 'llm_query:q1', 'llm_query:q2', 'llm_query:q3'], " \
        "['llm_batch:x', 'llm_batch:y'], 499500)\n", r  # fmt: skip
    assert [a.get("prompt", a.get("prompts")) for _, a in handler.calls] == [
        "q0",
        "q1",
        "q2",
        "q3",
        ["x", "y"],
    ]
    r = await sb.run_cell("x = await llm_query_async('again')\nx")  # variables persist; sync cells unchanged
    assert (
        r.output == "'llm_query:again'\n" and (await sb.run_cell("answers[0]")).output == "'llm_query:q0'\n"
    )


async def test_async_errors_timeouts_and_final_inside_await(sandboxes):
    sb = await sandboxes(handler=RecordingHandler(fail=RuntimeError("budget spent")))
    r = await sb.run_cell(
        "try:\n    await llm_query_async('x')\nexcept SubCallError as e:\n    print('caught', e)"
    )
    assert r.output.startswith("caught") and "budget spent" in r.output, r
    r = await sb.run_cell("import asyncio\nawait asyncio.sleep(30)")
    assert r.timed_out and not r.worker_restarted, r  # the in-worker timer interrupts an awaiting cell
    r = await sb.run_cell("async def f():\n    return 7\nFINAL(await f())")
    assert r.answer.ready and r.answer.content == 7, r


async def test_bind_variable_sets_history_and_resets_the_answer(sandboxes):
    sb = await sandboxes()
    r = await sb.run_cell("FINAL('first')")
    assert r.answer.ready
    assert await sb.bind_variable("history_0", {"question": "q", "answer": "first"}, reset_answer=True)
    assert not sb.get_answer().ready
    r = await sb.run_cell("history_0['answer'], answer")
    assert r.output == "('first', {'content': None, 'ready': False})\n" and not r.answer.ready, r
    assert not await sb.bind_variable("llm_query", 1)  # the helpers cannot be replaced this way
    assert not await sb.bind_variable("not a name", 1)
    with pytest.raises(TypeError):
        await sb.bind_variable("x", object())  # the host's own bad value: a clear error here


# ---- escape tests for the frames async sub-calls and binding use ------------------------------------


@pytest.mark.parametrize("bad_id", ["-1", "'7'", "2**70", "True", "None", "1.5"])
async def test_forged_async_call_frames_with_hostile_ids_are_violations(sandboxes, canary, bad_id):
    handler = RecordingHandler()
    sb = await sandboxes(handler=handler)
    r = await sb.run_cell(
        FIND_SOCKET + f"msg = json.dumps({{'op': 'call', 'id': {bad_id}, 'fn': 'llm_query', "
        "'args': {'prompt': 'p', 'sampling': {}}}).encode()\n"
        "os.write(SOCK, struct.pack('>I', len(msg)) + msg)\nimport time\ntime.sleep(5)"
    )
    assert r.worker_restarted and r.protocol_violation and "ProtocolViolation" in r.error, r
    assert handler.calls == []  # a malformed id never reaches the handler
    await assert_host_intact(sb, canary)


async def test_out_of_order_call_ids_are_each_answered_under_their_own_id(sandboxes, canary):
    handler = RecordingHandler()
    sb = await sandboxes(handler=handler)
    r = await sb.run_cell(
        FIND_SOCKET + "def send(i):\n"
        "    m = json.dumps({'op': 'call', 'id': i, 'fn': 'llm_query', 'args': {'prompt': str(i)}}).encode()\n"
        "    os.write(SOCK, struct.pack('>I', len(m)) + m)\n"
        "def read():\n"
        "    n = struct.unpack('>I', os.read(SOCK, 4))[0]\n"
        "    return json.loads(os.read(SOCK, n))\n"
        "send(9); send(3)\n"
        "[(x['id'], x['value']) for x in (read(), read())]"
    )
    assert r.output == "[(9, 'llm_query:9'), (3, 'llm_query:3')]\n", r
    assert [a["prompt"] for _, a in handler.calls] == ["9", "3"]
    await assert_host_intact(sb, canary)


@pytest.mark.parametrize(
    "frame",
    [
        "{'op': 'bind', 'id': 1, 'name': 'x', 'value': 1}",
        "{'op': 'call_result', 'id': 1, 'ok': True, 'value': 1}",
    ],
    ids=["bind-from-worker", "call-result-from-worker"],
)
async def test_host_side_ops_sent_by_the_worker_are_violations(sandboxes, canary, frame):
    sb = await sandboxes()
    r = await sb.run_cell(
        FIND_SOCKET + f"m = json.dumps({frame}).encode()\nos.write(SOCK, struct.pack('>I', len(m)) + m)\n"
        "import time\ntime.sleep(5)"
    )
    assert r.worker_restarted and r.protocol_violation, r
    await assert_host_intact(sb, canary)


async def test_a_late_reply_to_an_abandoned_async_call_does_not_leak_into_the_next_cell(sandboxes, canary):
    # The cell ends (timer) while an async call is still being served: the next cell works.
    sb = await sandboxes(handler=RecordingHandler(delay=0.5))
    r = await sb.run_cell(
        "import asyncio\nt = asyncio.ensure_future(llm_query_async('slow'))\nawait asyncio.sleep(0.05)\n1"
    )
    assert r.error is None and r.output == "1\n", r
    r = await sb.run_cell("llm_query('next')")
    assert r.output == "'llm_query:next'\n", r
    await assert_host_intact(sb, canary)

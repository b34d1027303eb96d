"""The REPL sandbox as the episode uses it: cells, output, errors, timeouts, restarts, answers."""

# ruff: noqa: F811 - pytest fixtures imported from tests.sandbox_helpers are test arguments

from __future__ import annotations

import asyncio
import time

import pytest

from rlm_env.sandbox import SandboxConfig
from tests.sandbox_helpers import FAST, RecordingHandler, host_can_spawn, sandboxes  # noqa: F401 (fixture)


async def test_state_persists_across_cells(sandboxes):
    sb = await sandboxes()
    await sb.run_cell("x = 41\ndef f(y):\n    return y + 1")
    r = await sb.run_cell("f(x)")
    assert r.output == "42\n" and r.error is None
    assert not r.worker_restarted and not r.timed_out


async def test_print_and_last_expression_like_a_notebook(sandboxes):
    sb = await sandboxes()
    r = await sb.run_cell("print('hello')\nimport sys\nprint('err', file=sys.stderr)\n[1, 2]")
    assert r.output == "hello\nerr\n[1, 2]\n"
    assert (await sb.run_cell("None")).output == ""
    assert (await sb.run_cell("y = 3")).output == ""
    assert (await sb.run_cell("for i in range(2):\n    i")).output == ""  # not a last expression


async def test_output_truncated_keeping_head_and_tail(sandboxes):
    sb = await sandboxes(config=FAST.model_copy(update={"max_output_chars": 1000}))
    r = await sb.run_cell("print('A' * 3000 + 'B' * 3000)")
    assert r.truncated and r.chars_cut == 6001 - 1000
    assert r.output.startswith("A" * 500) and r.output.endswith("B" * 499 + "\n")
    assert f"... [{r.chars_cut:,} characters cut] ..." in r.output
    assert len(r.output) < 1100


async def test_ten_megabyte_print_is_bounded_and_fast(sandboxes):
    sb = await sandboxes()
    t0 = time.monotonic()
    r = await sb.run_cell("print('x' * 10_000_000)\nprint('END')")
    assert time.monotonic() - t0 < 2.0
    assert r.truncated and r.output.endswith("END\n") and len(r.output) < 20_200
    assert r.chars_cut == 10_000_005 - 20_000


async def test_many_small_prints_keep_the_tail(sandboxes):
    sb = await sandboxes()
    r = await sb.run_cell("for i in range(200_000):\n    print(i)")
    assert r.truncated and r.output.endswith("199999\n") and r.output.startswith("0\n1\n2\n")


async def test_syntax_error_shows_the_line(sandboxes):
    sb = await sandboxes()
    r = await sb.run_cell("x = 1\ny = (2 +\n")
    assert r.error is not None and "SyntaxError" in r.error and "line 2" in r.error
    assert (await sb.run_cell("x")).error is not None  # nothing of a cell that failed to parse ran


async def test_exception_traceback_shows_only_user_frames(sandboxes):
    sb = await sandboxes()
    r = await sb.run_cell("def g():\n    raise ValueError('bad value')\nprint('before')\ng()")
    assert r.output == "before\n"
    assert r.error.endswith("ValueError: bad value")
    assert r.error.startswith("Traceback (most recent call last):")
    assert "line 2, in g" in r.error and "rlm-worker" not in r.error


async def test_deep_recursion_error_is_bounded(sandboxes):
    sb = await sandboxes()
    r = await sb.run_cell("def f(n):\n    return f(n + 1)\nf(0)")
    assert "RecursionError" in r.error and "earlier frames not shown" in r.error
    assert len(r.error) < 6100


async def test_system_exit_is_an_observation(sandboxes):
    sb = await sandboxes()
    await sb.run_cell("keep = 1")
    r = await sb.run_cell("import sys; sys.exit(3)")
    assert "SystemExit: 3" in r.error and not r.worker_restarted
    assert (await sb.run_cell("keep")).output == "1\n"


async def test_non_utf8_output_is_replaced(sandboxes):
    sb = await sandboxes()
    r = await sb.run_cell(
        "import sys\nsys.stdout.buffer.write(b'ok \\xff\\xfe end\\n')\nprint('lone \\udc80 surrogate')"
    )
    assert r.error is None
    assert "ok \ufffd\ufffd end" in r.output and "lone ? surrogate" in r.output
    r.output.encode("utf-8")
    r = await sb.run_cell("'\\ud800'")  # the repr of a lone surrogate is plain ASCII
    assert r.output == "'\\ud800'\n"


async def test_infinite_loop_times_out_and_state_survives(sandboxes):
    sb = await sandboxes(config=FAST.model_copy(update={"cell_timeout_s": 0.5}))
    await sb.run_cell("kept = 'yes'")
    t0 = time.monotonic()
    r = await sb.run_cell("partial = 1\nprint('started')\nwhile True:\n    pass")
    assert time.monotonic() - t0 < 1.5
    assert r.timed_out and not r.worker_restarted and "CellTimeout" in r.error
    assert r.output == "started\n"
    assert (await sb.run_cell("kept, partial")).output == "('yes', 1)\n"


async def test_timeout_is_not_caught_by_except_exception(sandboxes):
    sb = await sandboxes(config=FAST.model_copy(update={"cell_timeout_s": 0.3}))
    r = await sb.run_cell("try:\n    while True: pass\nexcept Exception:\n    print('caught')")
    assert r.timed_out and "caught" not in r.output


async def test_swallowed_timeout_restarts_the_worker(sandboxes):
    cfg = FAST.model_copy(update={"cell_timeout_s": 0.3, "kill_grace_s": 0.5})
    sb = await sandboxes(config=cfg)
    await sb.run_cell("lost = 1")
    t0 = time.monotonic()
    # (The inner loop must span two lines: CPython 3.11 raises a signal handler's exception
    # outside the `try` for a one-line `while True: ...`, which would not swallow anything.)
    code = "while True:\n    try:\n        while True:\n            x = 1\n    except BaseException:\n        pass"
    r = await sb.run_cell(code)
    assert time.monotonic() - t0 < 3
    assert r.timed_out and r.worker_restarted and sb.restarts == 1
    assert "were lost" in r.output
    r = await sb.run_cell("print(len(context)); lost")
    assert r.output == "11\n" and "NameError" in r.error  # same context, empty namespace


async def test_stuck_in_c_code_restarts(sandboxes):
    cfg = FAST.model_copy(update={"cell_timeout_s": 0.3, "kill_grace_s": 0.5})
    sb = await sandboxes(config=cfg)
    t0 = time.monotonic()
    r = await sb.run_cell("sum(range(10 ** 12))")  # C code that never checks for signals
    assert time.monotonic() - t0 < 3
    assert r.timed_out and r.worker_restarted and "CellTimeout" in r.error
    assert (await sb.run_cell("2")).output == "2\n"


async def test_memory_bomb_is_an_error_and_host_is_fine(sandboxes):
    sb = await sandboxes(config=FAST.model_copy(update={"memory_limit_mb": 256}))
    r = await sb.run_cell("x = bytearray(1024 ** 3)")
    assert "MemoryError" in r.error and not r.worker_restarted
    r = await sb.run_cell("chunks = []\nwhile True:\n    chunks.append(bytearray(10 ** 7))")
    assert "MemoryError" in (r.error or "") or r.worker_restarted
    r = await sb.run_cell("chunks = None\n1 + 1")
    assert r.output.endswith("2\n")
    assert host_can_spawn()


async def test_os_exit_restarts(sandboxes):
    sb = await sandboxes()
    await sb.run_cell("v = 1")
    r = await sb.run_cell("import os\nprint('bye')\nos._exit(7)")
    assert r.worker_restarted and "WorkerDied" in r.error and "died" in r.output
    assert (await sb.run_cell("'v' in globals()")).output == "False\n"


async def test_segfault_restarts_and_shows_the_crash(sandboxes):
    sb = await sandboxes()
    r = await sb.run_cell("import ctypes\nctypes.string_at(0)")
    assert r.worker_restarted and "Segmentation fault" in r.output
    assert (await sb.run_cell("1")).output == "1\n"


async def test_final_sets_the_answer(sandboxes):
    sb = await sandboxes()
    r = await sb.run_cell("FINAL({'n': 3, 'names': ['a', 'b']})")
    assert r.answer.ready and r.answer.content == {"n": 3, "names": ["a", "b"]} and r.answer.via == "FINAL"
    assert sb.get_answer() == r.answer


async def test_final_of_a_non_json_value_uses_str(sandboxes):
    sb = await sandboxes()
    r = await sb.run_cell("FINAL({1, 2})")
    assert r.answer.ready and r.answer.content == "{1, 2}"


async def test_final_var(sandboxes):
    sb = await sandboxes()
    r = await sb.run_cell("result = [1, 2, 3]\nFINAL_VAR('result')")
    assert r.answer.ready and r.answer.content == [1, 2, 3] and r.answer.via == "FINAL_VAR"


async def test_final_var_missing_variable_is_an_error(sandboxes):
    sb = await sandboxes()
    r = await sb.run_cell("FINAL_VAR('nope')")
    assert "NameError" in r.error and "nope" in r.error and not r.answer.ready


async def test_answer_dict(sandboxes):
    sb = await sandboxes()
    r = await sb.run_cell("answer['content'] = 'forty-two'")
    assert not r.answer.ready
    r = await sb.run_cell("answer['ready'] = True")
    assert r.answer.ready and r.answer.content == "forty-two" and r.answer.via == "answer_dict"


@pytest.mark.parametrize(
    "code, needle",
    [
        ("class B:\n    def __str__(self): raise RuntimeError('boom')\nFINAL(B())", "RuntimeError"),
        ("class B:\n    def __str__(self): return 'x' * 10 ** 8\nFINAL(B())", "too large"),
        ("FINAL('y' * 2_000_000)", "too large"),
    ],
)
async def test_exploding_answer_is_refused(sandboxes, code, needle):
    sb = await sandboxes()
    r = await sb.run_cell(code)
    assert not r.answer.ready and needle in r.answer.error and r.answer.content is None
    assert "answer not accepted" in r.output
    assert (await sb.run_cell("1")).output == "1\n"


async def test_show_vars_and_lookup(sandboxes):
    sb = await sandboxes()
    await sb.run_cell("import json\nfound = {'k': 1}\nname = 'z'\n_hidden = 1\nclass C: pass\nobj = C()")
    r = await sb.run_cell("SHOW_VARS()")
    assert r.output == "{'found': 'dict', 'name': 'str', 'C': 'type', 'obj': 'C'}\n"
    assert await sb.show_vars() == {"found": "dict", "name": "str", "C": "type", "obj": "C"}
    assert await sb.lookup_variable("found") == (True, {"k": 1})
    assert await sb.lookup_variable("obj") == (True, (await sb.run_cell("str(obj)")).output.strip()[1:-1])
    assert await sb.lookup_variable("missing") == (False, None)


async def test_llm_query_routes_to_the_handler(sandboxes):
    handler = RecordingHandler()
    sb = await sandboxes(handler=handler)
    r = await sb.run_cell("llm_query('hi', temperature=0.5)")
    assert r.output == "'llm_query:hi'\n"
    assert handler.calls == [("llm_query", {"prompt": "hi", "sampling": {"temperature": 0.5}})]
    r = await sb.run_cell("rlm_query('deep')")
    assert r.output == "'rlm_query:deep'\n"


async def test_llm_batch_keeps_order(sandboxes):
    handler = RecordingHandler()
    sb = await sandboxes(handler=handler)
    r = await sb.run_cell("llm_batch([f'p{i}' for i in range(5)], max_tokens=3)")
    assert r.output == str([f"llm_batch:p{i}" for i in range(5)]) + "\n"
    assert handler.calls == [
        ("llm_batch", {"prompts": [f"p{i}" for i in range(5)], "sampling": {"max_tokens": 3}})
    ]
    assert (await sb.run_cell("llm_batch(())")).output == "[]\n"


async def test_handler_failure_is_a_catchable_subcall_error(sandboxes):
    sb = await sandboxes(handler=RecordingHandler(fail=RuntimeError("budget exhausted")))
    r = await sb.run_cell("try:\n    llm_query('x')\nexcept SubCallError as e:\n    print('caught:', e)")
    assert r.output == "caught: RuntimeError: budget exhausted\n" and r.error is None


@pytest.mark.parametrize(
    "code, needle",
    [
        ("llm_query(123)", "prompt must be a str, got int"),
        ("llm_batch('abc')", "prompts must be a list of str"),
        ("llm_batch(['a', 2])", "prompts[1] must be a str"),
        ("llm_query(object())", "JSON-serializable"),
        ("llm_query('x', temperature=float('nan'))", "JSON-serializable"),
    ],
)
async def test_bad_subcall_arguments_are_subcall_errors(sandboxes, code, needle):
    handler = RecordingHandler()
    sb = await sandboxes(handler=handler)
    r = await sb.run_cell(code)
    assert "SubCallError" in r.error and needle in r.error
    assert handler.calls == []


async def test_time_blocked_in_subcalls_does_not_count(sandboxes):
    handler = RecordingHandler(delay=0.4)
    cfg = FAST.model_copy(update={"cell_timeout_s": 0.5, "kill_grace_s": 0.3})
    sb = await sandboxes(handler=handler, config=cfg)
    t0 = time.monotonic()
    r = await sb.run_cell("out = [llm_query(str(i)) for i in range(4)]\nlen(out)")
    assert time.monotonic() - t0 > 1.5  # four 0.4 s calls inside a 0.5 s cell limit
    assert r.output == "4\n" and not r.timed_out and r.error is None


async def test_subcalls_from_threads_are_serialized(sandboxes):
    handler = RecordingHandler(delay=0.01)
    sb = await sandboxes(handler=handler)
    r = await sb.run_cell(
        "from concurrent.futures import ThreadPoolExecutor\n"
        "with ThreadPoolExecutor(4) as ex:\n"
        "    out = list(ex.map(llm_query, [str(i) for i in range(12)]))\n"
        "out == [f'llm_query:{i}' for i in range(12)]"
    )
    assert r.output == "True\n" and len(handler.calls) == 12


async def test_cancelled_cell_kills_and_the_next_cell_restarts(sandboxes):
    sb = await sandboxes()
    await sb.run_cell("v = 1")
    task = asyncio.create_task(sb.run_cell("import time\ntime.sleep(30)"))
    await asyncio.sleep(0.2)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    r = await sb.run_cell("'v' in globals()")
    assert r.worker_restarted and r.error is None
    assert "cancelled" in r.output and r.output.endswith("False\n")


async def test_async_context_manager_and_closed_sandbox(sandboxes):
    sb = await sandboxes()
    async with sb:
        assert (await sb.run_cell("1")).output == "1\n"
    assert sb.closed
    with pytest.raises(RuntimeError):
        await sb.run_cell("1")


async def test_close_during_a_cell_does_not_restart(sandboxes):
    sb = await sandboxes()
    task = asyncio.create_task(sb.run_cell("import time\ntime.sleep(30)"))
    await asyncio.sleep(0.2)
    await sb.close()
    with pytest.raises(RuntimeError, match="closed"):
        await task
    assert sb.worker is None


def test_config_validation_names_the_field():
    from pydantic import ValidationError

    for field, bad in [
        ("cell_timeout_s", 0),
        ("memory_limit_mb", -5),
        ("max_output_chars", 10),
        ("mode", "docker"),
        ("extra_ro_binds", ["relative/path"]),
    ]:
        with pytest.raises(ValidationError) as e:
            SandboxConfig(**{field: bad})
        assert field in str(e.value)
    with pytest.raises(ValidationError, match="no_such_limit"):
        SandboxConfig(no_such_limit=1)
    with pytest.raises(ValidationError):
        SandboxConfig().cell_timeout_s = 5  # frozen

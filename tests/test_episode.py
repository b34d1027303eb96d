"""The episode loop with a scripted policy (a test double replaying given replies) on the real
bwrap sandbox: every way to answer, multi-block replies, every stop reason, budgets, child
episodes, and the trajectory record."""

from __future__ import annotations

import asyncio
import json

import pytest

from rlm_env.episode import (
    SCHEMA_VERSION,
    Episode,
    EpisodeConfig,
    EpisodeRecord,
    TrajectoryWriter,
    check_record,
    read_records,
)
from rlm_env.episode.config import config_from_dict, load_config
from rlm_env.models.base import Completion
from rlm_env.models.scripted import ScriptedPolicy
from rlm_env.tasks.base import Task
from tests.fakes import UpperCaseSubModel, repl

CONTEXT = "alpha beta\n" * 50 + "The secret code is 7731.\n" + "gamma delta\n" * 50


def make_task(context=CONTEXT, question="What is the secret code?") -> Task:
    return Task(id="t1", context=context, question=question, expected_answer="7731", scorer="exact")


def config(**overrides) -> EpisodeConfig:
    base = {"sandbox": {"cell_timeout_s": 5}}
    return config_from_dict(base, overrides)


async def run(replies, sub=None, cfg=None, task=None) -> tuple[EpisodeRecord, ScriptedPolicy]:
    policy = ScriptedPolicy(replies)
    episode = Episode(task or make_task(), cfg or config(), policy, sub or UpperCaseSubModel())
    record = await episode.run()
    return record, policy


FIND = "import re\ncode = re.search(r'code is (\\d+)', context).group(1)\n"


@pytest.mark.parametrize(
    ("reply", "via"),
    [
        (repl(FIND + "FINAL(code)"), "FINAL"),
        (repl(FIND + "FINAL_VAR('code')"), "FINAL_VAR"),
        (repl(FIND + "answer['content'] = code\nanswer['ready'] = True"), "answer_dict"),
    ],
)
async def test_answer_set_by_code_is_confirmed(reply, via):
    record, _ = await run([reply])
    assert record.answer.status == "confirmed"
    assert record.answer.content == "7731"
    assert record.answer.via == via
    assert record.stop_reason == "answer"
    assert record.sandbox_mode == "bwrap"
    assert not record.flags.infra_failure and not record.flags.model_failure


async def test_text_final_is_only_a_recorded_fallback():
    record, _ = await run(["I looked and I am sure.\nFINAL(7731)"])
    assert record.answer.status == "fallback_text"
    assert record.answer.content == "7731"
    record, _ = await run([repl(FIND), "FINAL_VAR(code)"])
    assert (record.answer.status, record.answer.content, record.answer.via) == (
        "fallback_text",
        "7731",
        "text_FINAL_VAR",
    )


async def test_final_written_in_prose_next_to_code_is_not_an_answer():
    record, policy = await run([repl("x = 1") + "\nFINAL(maybe)", repl("FINAL(x + 1)")])
    assert record.answer.status == "confirmed" and record.answer.content == 2
    assert len(policy.seen) == 2


async def test_extracted_answer_after_hitting_the_turn_limit():
    cfg = config(**{"budget.max_root_turns": 2})
    record, _ = await run([repl("answer['content'] = 'draft'"), repl("x = 2")], cfg=cfg)
    assert record.stop_reason == "max_turns"
    assert record.answer.status == "extracted" and record.answer.content == "draft"


async def test_multi_block_reply_runs_in_order_as_one_observation():
    reply = (
        repl("a = 1\nprint('first', a)")
        + "then\n"
        + repl("print('second', a + 1)")
        + "```python\nprint('ignored')\n```"
    )
    record, policy = await run([reply, repl("FINAL('ok')")])
    observation = policy.seen[1][-1]["content"]
    assert observation.index("first 1") < observation.index("second 2")
    assert "ignored" not in observation
    assert [c.index for c in record.cells[:2]] == [0, 1]


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        ("I will think about it.", "No ```repl block"),
        ("```python\nprint(1)\n```", "not run"),
        (repl("def broken(:\n  pass"), "SyntaxError"),
        (repl("1/0"), "ZeroDivisionError"),
        (repl("print('x' * 10_000_000)"), "characters cut"),
        (repl("import sys\nsys.stdout.buffer.write(b'\\xff\\xfe bad bytes')"), "bad bytes"),
    ],
)
async def test_bad_replies_get_an_observation_and_the_episode_goes_on(reply, expected):
    record, policy = await run([reply, repl("FINAL('done')")])
    assert expected in policy.seen[1][-1]["content"]
    assert record.answer.content == "done" and not record.flags.infra_failure


async def test_infinite_loop_times_out_and_state_survives():
    cfg = config(**{"sandbox.cell_timeout_s": 1})
    record, policy = await run([repl("kept = 5"), repl("while True: pass"), repl("FINAL(kept)")], cfg=cfg)
    assert "time limit" in policy.seen[2][-1]["content"]
    assert record.cells[1].timed_out
    assert record.answer.content == 5


async def test_stop_reason_max_root_tokens():
    cfg = config(**{"budget.max_root_tokens": 10})
    record, _ = await run([repl("x = '" + "y" * 200 + "'"), repl("FINAL(1)")], cfg=cfg)
    assert record.stop_reason == "max_root_tokens"
    assert record.flags.model_failure


async def test_stop_reason_context_window():
    cfg = config(**{"budget.context_window": 600})
    record, _ = await run([repl("print('z' * 3000)"), repl("FINAL(1)")], cfg=cfg)
    assert record.stop_reason == "context_window"


async def test_stop_reason_wall_clock():
    cfg = config(**{"budget.wall_clock_s": 0.5})
    record, _ = await run([repl("import time; time.sleep(1)"), repl("FINAL(1)")], cfg=cfg)
    assert record.stop_reason == "wall_clock"


async def test_root_engine_failure_is_infra_not_model():
    record, _ = await run([])  # the script is empty: the "engine" raises on the first call
    assert record.stop_reason == "model_error"
    assert record.flags.infra_failure and not record.flags.model_failure


async def test_truncated_reply_can_stop_the_episode():
    cut = Completion(text="```repl\nprint(1", finish_reason="length")

    class Cut(ScriptedPolicy):
        async def generate(self, *a, **k):
            return cut

    episode = Episode(make_task(), config(stop_on_truncated_reply=True), Cut([]), UpperCaseSubModel())
    record = await episode.run()
    assert record.stop_reason == "truncated_reply"


async def test_sub_calls_route_to_the_sub_model_in_order():
    sub = UpperCaseSubModel()
    reply = repl("one = llm_query('hello')\nmany = llm_batch(['a', 'b', 'c'])\nFINAL([one] + many)")
    record, _ = await run([reply], sub=sub)
    assert record.answer.content == ["HELLO", "A", "B", "C"]
    subs = [c for c in record.calls if c.role == "sub"]
    assert len(subs) == 4 and all(c.parent_id == "root-0" for c in subs)
    assert record.budget["sub_calls"] == 4


async def test_llm_batch_of_ten_thousand_prompts_is_refused_clearly():
    cfg = config(**{"budget.max_sub_calls": 50})
    reply = repl("try:\n    llm_batch(['p'] * 10_000)\nexcept SubCallError as e:\n    print('refused:', e)")
    record, policy = await run([reply, repl("FINAL('ok')")], cfg=cfg)
    observation = policy.seen[1][-1]["content"]
    assert "refused:" in observation and "10,000 prompts asked for, 50 sub-calls left" in observation
    assert record.budget["sub_calls"] == 0


async def test_concurrency_bound_is_enforced():
    sub = UpperCaseSubModel(delay_s=0.05)
    cfg = config(**{"budget.max_concurrent_sub_calls": 3})
    record, _ = await run(
        [repl("r = llm_batch([str(i) for i in range(12)])\nFINAL(len(r))")], sub=sub, cfg=cfg
    )
    assert record.answer.content == 12
    assert sub.peak_in_flight == 3 and record.budget["peak_concurrent_sub_calls"] == 3


async def test_sub_call_infra_failure_is_catchable_and_flagged():
    sub = UpperCaseSubModel(fail_on="boom")
    reply = repl("try:\n    llm_query('boom')\nexcept SubCallError as e:\n    msg = str(e)\nFINAL(msg)")
    record, _ = await run([reply], sub=sub)
    assert "infrastructure" in record.answer.content
    assert record.flags.infra_failure and record.budget["sub_calls_failed"] == 1


async def test_rlm_query_runs_a_child_episode_with_the_shared_budget():
    cfg = config(**{"budget.max_depth": 2})

    def root_or_child(messages):
        if "Read it with code" in messages[1]["content"]:  # the child's question
            return repl("FINAL('child saw ' + str(len(context)))")
        return repl("r = rlm_query('twelve chars')\nFINAL(r)")

    record, _ = await run([root_or_child, root_or_child], cfg=cfg)
    assert record.answer.content == "child saw 12"
    assert len(record.children) == 1
    child = record.children[0]
    assert child.depth == 1 and child.calls[0].role == "child" and child.calls[0].parent_id == "root-0"
    assert record.budget["child_episodes"] == 1 and record.budget["sub_calls"] == 1


async def test_rlm_query_at_the_depth_limit_falls_back_to_llm_query():
    record, _ = await run([repl("FINAL(rlm_query('flat'))")])  # default max_depth=1
    assert record.answer.content == "FLAT" and not record.children


async def test_trajectory_record_round_trips(tmp_path):
    record, _ = await run([repl("print(SHOW_VARS())"), repl(FIND + "FINAL(code)")])
    path = tmp_path / "t.jsonl"
    with TrajectoryWriter(path) as writer:
        writer.write(record)
    with open(path, "a") as f:
        f.write('{"schema_version": 1, "episode_id": "torn')  # a crash mid-write
    (back,) = read_records(path)
    assert back == record
    data = json.loads(record.to_json())
    assert data["schema_version"] == SCHEMA_VERSION == 3
    assert {"calls", "cells", "root_sample", "answer", "stop_reason", "budget", "flags", "rewards"} <= set(
        data
    )
    assert data["budget"]["limits"]["max_root_turns"] == 30
    assert data["task"]["question"] == "What is the secret code?" and "context" not in data["task"]
    with pytest.raises(ValueError, match="schema_version"):
        check_record({**data, "schema_version": 99})


def test_root_prompt_holds_metadata_not_the_context():
    async def first_messages():
        episode = Episode(make_task(context="x" * 100_000), config(), ScriptedPolicy([]), UpperCaseSubModel())
        try:
            return await episode.start()
        finally:
            await episode.close()

    messages = asyncio.run(first_messages())
    text = "".join(m["content"] for m in messages)
    assert "100,000 characters" in text and len(text) < 5_000


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"budget.max_root_turns": 0}, "max_root_turns"),
        ({"sandbox.cell_timeout_s": -1}, "cell_timeout_s"),
        ({"budget.bogus": 1}, "bogus"),
        ({"sub_call_policy": "sometimes"}, "sub_call_policy"),
    ],
)
def test_bad_config_names_the_field(overrides, field):
    with pytest.raises(ValueError, match=field):
        config_from_dict({}, overrides)


def test_config_loads_from_toml(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("[episode.budget]\nmax_root_turns = 3\n[episode.sandbox]\ncell_timeout_s = 9\n")
    cfg = load_config(path, {"budget.max_sub_calls": 7})
    assert (cfg.budget.max_root_turns, cfg.sandbox.cell_timeout_s, cfg.budget.max_sub_calls) == (3, 9, 7)


@pytest.mark.parametrize(
    ("text", "languages", "blocks", "unclosed", "text_final"),
    [
        ("```repl\na = 1\n```\n```repl\nb = 2\n```", ("repl",), ["a = 1", "b = 2"], False, None),
        ("```python\nx = 1\n```", ("repl",), [], False, None),
        ("```python\nx = 1\n```", ("repl", "python"), ["x = 1"], False, None),
        ("```repl\nprint(1)", ("repl",), [], True, None),
        ("All done.\nFINAL(42)", ("repl",), [], False, "42"),
        ("```repl\nFINAL(1)\n```\nFINAL(2)", ("repl",), ["FINAL(1)"], False, None),
        ("I will call FINAL(x) once I know x.", ("repl",), [], False, None),
    ],
)
def test_parse_reply(text, languages, blocks, unclosed, text_final):
    from rlm_env.episode.parsing import parse_reply

    parsed = parse_reply(text, languages)
    assert (parsed.code_blocks, parsed.unclosed_repl_block, parsed.text_final) == (
        blocks,
        unclosed,
        text_final,
    )


async def test_root_transcript_is_stored_once_and_each_call_points_into_it():
    record, policy = await run([repl("x = 1"), "thinking", repl("FINAL(x)")])
    roots = [c for c in record.calls if c.role == "root"]
    assert [c.num_messages for c in roots] == [2, 4, 6]
    for call, seen in zip(roots, policy.seen, strict=True):
        assert call.messages is None and record.root_messages[: call.num_messages] == seen
    assert record.root_messages[-1] == {"role": "assistant", "content": repl("FINAL(x)")}

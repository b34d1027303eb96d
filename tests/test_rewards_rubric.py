"""Shaping terms and the rubric on hand-made episode records."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from rewards import (
    Rubric,
    RubricConfig,
    call_with_pool,
    cost_fractions,
    cost_penalty,
    format_reward,
    infra_failure,
)
from rlm_env.episode.record import AnswerRecord, CellRecord, EpisodeRecord, Flags, ModelCall
from rlm_env.models.base import Completion, ModelError, as_judge
from rlm_env.tasks.base import Task

TASK = Task("t1", "ctx", "How many?", 42, "numeric", {"family": "oolong"})


def make_record(status="confirmed", content="42", cells=1, budget=None, flags=None, stop="answer", calls=()):
    return EpisodeRecord(
        episode_id="e1",
        task=TASK.describe(),
        config={},
        cells=[CellRecord(turn=0, index=i, code="x = 1", output="") for i in range(cells)],
        answer=AnswerRecord(status=status, content=content, via="answer_dict"),
        budget=budget if budget is not None else {},
        flags=flags or Flags(),
        stop_reason=stop,
        calls=list(calls),
    )


SNAPSHOT = {
    "limits": {"max_root_turns": 10, "max_root_tokens": 1000, "max_sub_tokens": 4000},
    "root_turns": 5,
    "root_completion_tokens": 250,
    "sub_prompt_tokens": 3000,
    "sub_completion_tokens": 1000,
}


@pytest.mark.parametrize(
    "status,cells,score",
    [("confirmed", 1, 1.0), ("fallback_text", 1, 0.5), ("extracted", 0, 0.0), ("confirmed", 0, 0.5)],
)
def test_format_reward(status, cells, score):
    assert format_reward(record=make_record(status=status, cells=cells)) == score


def test_cost_from_budget_snapshot():
    rec = make_record(budget=SNAPSHOT)
    assert cost_fractions(rec) == {"root_tokens": 0.25, "sub_tokens": 1.0, "turns": 0.5}
    assert cost_penalty(record=rec) == pytest.approx(-1.75)
    assert cost_penalty(record=rec, root_tokens=2.0, sub_tokens=0.0, turns=0.0) == pytest.approx(-0.5)


def test_cost_falls_back_to_calls_and_skips_unknown_limits():
    calls = [ModelCall(id=f"root-{i}", role="root", depth=0, num_completion_tokens=100) for i in range(3)]
    calls.append(ModelCall(id="sub-0", role="sub", depth=0, num_prompt_tokens=50, num_completion_tokens=50))
    rec = make_record(budget={"limits": {"max_root_tokens": 600, "max_sub_tokens": 1000}}, calls=calls)
    assert cost_fractions(rec) == {"root_tokens": 0.5, "sub_tokens": 0.1}
    assert cost_fractions(make_record(budget={"weird": "shape"})) == {}
    assert cost_penalty(record=make_record(budget={"limits": "not a dict"})) == 0.0


@pytest.mark.parametrize(
    "flags,stop,value",
    [
        (Flags(), "answer", 0.0),
        (Flags(infra_failure=True), "answer", 1.0),
        (Flags(), "sandbox_error", 1.0),
        (Flags(), "model_error", 1.0),
        (Flags(infra_errors=["replica lost"]), "max_turns", 1.0),
        (Flags(), "max_turns", 0.0),
    ],
)
def test_infra_failure(flags, stop, value):
    assert infra_failure(record=make_record(flags=flags, stop=stop)) == value


async def test_rubric_correct_answer():
    rec = make_record(budget=SNAPSHOT)
    out = await Rubric().score(rec, TASK)
    assert out["correctness"] == 1.0 and out["reward"] == 1.0
    assert out["infra_failure"] == 0.0 and out["mask"] == 1.0
    assert out["format"] == 1.0 and out["cost"] == pytest.approx(-1.75)  # logged, weight 0
    assert rec.rewards == out


async def test_rubric_weights_and_numeric_scoring():
    cfg = RubricConfig(weights={"correctness": 1.0, "format": 0.1, "cost": 0.2}, cost_sub_tokens=0.0)
    out = await Rubric(cfg).score(make_record(content="There are 40.", budget=SNAPSHOT), TASK)
    assert out["correctness"] == pytest.approx(0.75**2)
    assert out["reward"] == pytest.approx(0.75**2 + 0.1 * 1.0 + 0.2 * -0.75)


async def test_rubric_extracted_answers_do_not_earn_correctness():
    out = await Rubric().score(make_record(status="extracted"), TASK)
    assert out["correctness"] == 0.0 and out["correctness_any"] == 1.0 and out["reward"] == 0.0
    out = await Rubric(RubricConfig(scored_statuses=("confirmed", "extracted"))).score(
        make_record(status="extracted"), TASK
    )
    assert out["correctness"] == 1.0


async def test_rubric_infra_failure_is_masked_not_penalized():
    cfg = RubricConfig(weights={"correctness": 1.0, "cost": 1.0})
    out = await Rubric(cfg).score(make_record(flags=Flags(infra_failure=True), budget=SNAPSHOT), TASK)
    assert out["reward"] == 0.0 and out["infra_failure"] == 1.0 and out["mask"] == 0.0
    assert out["cost"] == 0.0


class Judge:
    name = "judge"

    def __init__(self, fail=False):
        self.fail = fail

    async def generate(self, messages, sampling, **kw):
        if self.fail:
            raise ModelError("judge down")
        return Completion(text="yes", finish_reason="stop")

    async def close(self):
        return None


async def test_rubric_with_llm_judge_and_judge_failure():
    task = Task("t2", "ctx", "Capital of France?", "Paris", "llm_judge")
    rec = make_record(content="It is Paris")
    assert (await Rubric().score(rec, task, judge=as_judge(Judge())))["correctness"] == 1.0
    assert rec.training_exclusion() is None
    out = await Rubric().score(rec, task, judge=as_judge(Judge(fail=True)))
    assert out["infra_failure"] == 1.0 and out["mask"] == 0.0 and out["reward"] == 0.0
    # The judge's failure reaches the one exclusion rule trainers read, not only `rewards`.
    assert rec.flags.infra_failure and "judge" in rec.flags.infra_errors[0]
    assert rec.training_exclusion() == "infra_failure"


async def test_rubric_custom_functions_get_only_their_arguments():
    seen = {}

    def by_name(answer, info):
        seen["sync"] = (answer, info["answer_status"])
        return 0.5

    async def by_kwargs(**kw):
        seen["async"] = sorted(kw)
        return 1.0

    rubric = Rubric(RubricConfig(weights={"a": 2.0, "b": 1.0}), functions={"a": by_name, "b": by_kwargs})
    out = await rubric.score(make_record(), TASK)
    assert out["a"] == 0.5 and out["b"] == 1.0 and out["reward"] == 2.0
    assert seen["sync"] == ("42", "confirmed")
    assert seen["async"] == ["answer", "expected", "info", "judge", "question", "record", "task"]


async def test_rubric_without_task_reads_the_record():
    out = await Rubric().score(make_record(content="42"))
    assert out["correctness"] == 1.0


async def test_call_with_pool_filters():
    assert await call_with_pool(lambda record: 3, {"record": 1, "answer": 2}) == 3


def test_config_is_frozen_and_strict():
    cfg = RubricConfig()
    with pytest.raises(ValidationError):
        cfg.cost_turns = 2.0
    with pytest.raises(ValidationError):
        RubricConfig(weight={"x": 1})
    assert "weighs 0" in RubricConfig.model_fields["weights"].description

"""`rlm-env eval` plumbing on a user dataset, with a scripted root (the real-engine run of the
same path is in test_episode_engine.py)."""

from __future__ import annotations

import json

from rewards import Rubric, RubricConfig
from rlm_env.episode.config import config_from_dict
from rlm_env.evaluate import EvalConfig, build_tasks, run_eval, summarize
from rlm_env.models.scripted import ScriptedPolicy
from tests.fakes import UpperCaseSubModel, repl


async def test_eval_on_a_jsonl_dataset_scores_and_summarizes(tmp_path):
    rows = [
        {"id": "a", "context": "the code is 11", "question": "code?", "answer": "11"},
        {"id": "b", "context": "the code is 22", "question": "code?", "answer": "22", "scorer": "exact"},
        {"id": "c", "context": "the code is 33", "question": "code?", "answer": "34"},
    ]
    dataset = tmp_path / "tasks.jsonl"
    dataset.write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = EvalConfig(dataset=str(dataset), out=str(tmp_path / "out"), episodes=10)
    tasks = build_tasks(config)
    assert [t.expected_answer for t in tasks] == ["11", "22", "34"]
    policy = ScriptedPolicy([lambda m: repl("FINAL(context.split()[-1])")] * 10)
    records = await run_eval(
        config, config_from_dict({}), tasks, policy, UpperCaseSubModel(), Rubric(RubricConfig())
    )
    by_id = {r.task["id"]: r for r in records}
    assert {k: r.rewards["correctness"] for k, r in by_id.items()} == {"a": 1.0, "b": 1.0, "c": 0.0}
    (row,) = summarize(records)
    assert row["episodes"] == 3 and abs(row["accuracy"] - 2 / 3) < 1e-3 and row["answered"] == 1.0

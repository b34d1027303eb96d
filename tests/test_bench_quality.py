"""The quality figure's assembly: three arms per length, resumable arms, no engine needed."""

from __future__ import annotations

import asyncio
import json

import pytest

from rlm_env.bench.quality import run_plain_arm, table_rows, write_outputs
from rlm_env.episode.record import EpisodeRecord
from rlm_env.models.base import Completion, ModelError
from rlm_env.tasks.base import Task


def _record(label: str, correct: float, turns: int) -> EpisodeRecord:
    return EpisodeRecord(
        episode_id=f"{label}-{correct}-{turns}",
        task={"id": "t", "metadata": {"length_label": label, "length_tokens": 8000}},
        config={},
        budget={"root_turns": turns, "root_prompt_tokens": 100, "root_completion_tokens": 10},
        rewards={"correctness": correct},
    )


def test_rows_put_untrained_trained_and_plain_side_by_side(tmp_path):
    rlm = [_record("8k", 0.0, 6), _record("8k", 0.0, 6)]
    trained = [_record("8k", 1.0, 2), _record("8k", 0.0, 3)]
    plain = [
        {"length_label": "8k", "score": 1.0, "prompt_tokens": 7000, "completion_tokens": 5, "wall_s": 1.0}
    ]
    (row,) = table_rows(rlm, plain, ["8k"], trained)
    assert (row["rlm_score"], row["trained_score"], row["plain_score"]) == (0.0, 0.5, 1.0)
    assert (row["rlm_turns"], row["trained_turns"]) == (6, 2.5)
    assert row["trained_tokens_per_episode"] == 110 and row["plain_tokens_per_episode"] == 7005
    assert row["episodes"] == 2
    (only_plain,) = table_rows(None, plain, ["8k"])
    assert "rlm_score" not in only_plain and "trained_score" not in only_plain
    write_outputs(tmp_path, [row], "t")
    assert json.loads((tmp_path / "quality.json").read_text())["rows"][0]["trained_score"] == 0.5
    assert (tmp_path / "quality.png").stat().st_size > 0


class _CountingModel:
    tokenizer = None

    def __init__(self):
        self.calls = 0

    async def generate(self, messages, sampling, **_):
        self.calls += 1
        return Completion(text="42", finish_reason="stop", prompt_token_ids=[1] * 9, completion_token_ids=[5])


def test_plain_arm_resumes_and_skips_a_torn_line(tmp_path):
    tasks = [Task(f"t{i}", "filler " * 50, "What?", "42", "exact", {"length_label": "1k"}) for i in range(3)]
    path = tmp_path / "plain.jsonl"
    model = _CountingModel()
    first = asyncio.run(run_plain_arm(tasks[:2], model, 2048, path))
    assert model.calls == 2 and [r["score"] for r in first] == [1.0, 1.0]
    with open(path, "a") as f:
        f.write('{"task_id": "t2", "sco')  # a kill mid-write
    rows = asyncio.run(run_plain_arm(tasks, model, 2048, path))
    assert model.calls == 3 and [r["task_id"] for r in rows] == ["t0", "t1", "t2"]


class _FailingOnceModel(_CountingModel):
    """Times out on task t1's first call, as an engine starved of CPU does."""

    async def generate(self, messages, sampling, **_):
        if "t1-marker" in str(messages) and not getattr(self, "failed", False):
            self.failed = True
            raise ModelError("request timed out after 300.0 s")
        return await super().generate(messages, sampling)


def test_plain_arm_keeps_the_other_calls_when_the_engine_fails_one(tmp_path):
    tasks = [
        Task(f"t{i}", f"t{i}-marker " * 20, "What?", "42", "exact", {"length_label": "1k"}) for i in range(3)
    ]
    path = tmp_path / "plain.jsonl"
    model = _FailingOnceModel()
    with pytest.raises(SystemExit, match="1 plain call"):
        asyncio.run(run_plain_arm(tasks, model, 2048, path))
    assert sorted(json.loads(line)["task_id"] for line in path.read_text().splitlines()) == ["t0", "t2"]
    rows = asyncio.run(run_plain_arm(tasks, model, 2048, path))  # the resume runs only t1
    assert [r["task_id"] for r in rows] == ["t0", "t1", "t2"] and model.calls == 3


def test_an_arm_not_run_at_a_length_has_no_number_there():
    rows = table_rows(
        [_record("8k", 0.0, 6)], None, ["8k", "1m"], [_record("8k", 1.0, 2), _record("1m", 1.0, 2)]
    )
    assert rows[0]["rlm_score"] == 0.0 and rows[1]["rlm_score"] is None and rows[1]["rlm_episodes"] == 0
    assert rows[1]["trained_score"] == 1.0

"""`rlm_env.rollouts`: finished, scored records as an async iterator, lazily, under a bound."""

from __future__ import annotations

import asyncio
import itertools

import pytest

import rlm_env
from rlm_env.adapters.rollouts import collect, rollouts, training_exclusion
from rlm_env.models import InstantModel
from rlm_env.models.base import Completion
from rlm_env.tasks import make_tasks

SMALL = {"budget": {"max_root_turns": 3}}


class CountingScript:
    """Replies a search cell, then FINAL; counts episodes in flight (by session id)."""

    name = "script"
    supports_token_prompts = False

    def __init__(self):
        self.live: set[str] = set()
        self.peak = 0

    async def generate(self, messages, sampling, *, prompt_token_ids=None, session_id=None):
        turn = sum(1 for m in messages if m["role"] == "assistant")
        if turn == 0:
            self.live.add(session_id)
            self.peak = max(self.peak, len(self.live))
            await asyncio.sleep(0.05)
            return Completion(
                "```repl\nx = llm_query('hi')\nprint(len(context))\n```", "stop", model=self.name
            )
        self.live.discard(session_id)
        return Completion("```repl\nFINAL(x)\n```", "stop", model=self.name)

    async def close(self):
        return None


def test_lazy_export():
    assert rlm_env.rollouts is rollouts and "rollouts" in rlm_env.__all__


async def test_yields_scored_records_with_bounded_concurrency_and_group_ids():
    root = CountingScript()
    tasks = make_tasks("niah", ["2k"], 3, split="train")
    records = await collect(tasks, root, sub_model=InstantModel("ok"), config=SMALL, concurrency=2, repeats=2)
    assert len(records) == 6 and root.peak == 2
    assert sorted(r.episode_id for r in records) == sorted(f"{t.id}#{k}" for t in tasks for k in range(2))
    for r in records:
        assert r.answer.status == "confirmed" and r.answer.content == "ok"
        assert set(r.rewards) >= {"reward", "correctness", "mask"} and r.sandbox_mode == "bwrap"
        assert [c.role for c in r.calls] == ["root", "sub", "root"]
        assert training_exclusion(r) == (r.training_exclusion() if hasattr(r, "training_exclusion") else None)


async def test_endless_task_stream_and_early_stop():
    def endless():
        for seed in itertools.count():
            yield make_tasks("niah", ["2k"], 1, split="train", seed=seed)[0]

    stream = rollouts(endless(), CountingScript(), sub_model=InstantModel(), config=SMALL, concurrency=3)
    got = []
    async for record in stream:
        got.append(record)
        if len(got) == 4:
            break
    await stream.aclose()  # cancels what is in flight and closes the warm sandboxes
    assert len(got) == 4 and len({r.task["id"] for r in got}) == 4


async def test_rubric_false_leaves_records_unscored_and_bad_arguments_fail():
    tasks = make_tasks("niah", ["2k"], 1)
    [record] = await collect(tasks, CountingScript(), sub_model=InstantModel(), config=SMALL, rubric=False)
    assert record.rewards == {}
    with pytest.raises(ValueError):
        await collect(tasks, CountingScript(), concurrency=0)


@pytest.mark.slow
@pytest.mark.engine
async def test_real_engine_records_carry_training_samples(vllm_client):
    config = {
        "budget": {"max_root_turns": 2},
        "root_sampling": {"max_tokens": 24},
        "sub_sampling": {"max_tokens": 8},
    }
    tasks = make_tasks("niah", ["2k"], 1, split="train")
    records = await collect(tasks, vllm_client, config=config, repeats=2, concurrency=2)
    assert len(records) == 2 and not vllm_client._closed  # a client passed in stays open
    for r in records:
        sample = r.root_sample
        assert sample.available and len(sample.token_ids) == len(sample.loss_mask) == len(sample.logprobs)
        sampled = sum(len(c.completion_token_ids) for c in r.calls if c.role == "root")
        assert sum(sample.loss_mask) == sampled > 0 and "reward" in r.rewards

"""Root-history compaction with the default model on the real vLLM engine, in the real sandbox.

The window is sized from the real first prompt so that any root turn pushes the transcript past
the trigger: whatever the model writes (never asserted), the next root call is preceded by a
summary call on the same engine and a new root segment. Checked: the record's structure, each
segment's prefix and mask invariants, and one training sample per segment.
"""

from __future__ import annotations

import asyncio

import pytest

from rewards import Rubric
from rlm_env.episode import Episode
from rlm_env.episode.config import config_from_dict
from rlm_env.episode.prompt import build_root_messages, context_meta
from rlm_env.models.base import chat_prompt_ids
from rlm_env.sandbox import prepare_context
from rlm_env.tasks.base import Task
from training import samples_from_records

pytestmark = [pytest.mark.engine, pytest.mark.slow]

TASK = Task(
    id="compact-e2e", context="filler line\n" * 200 + "The key is 4411.\n", question="What is the key?"
)


def tiny_window_config(tokenizer) -> dict:
    base = {
        "budget": {"max_root_turns": 3},
        "root_sampling": {"max_tokens": 24, "temperature": 1.0},
        "sub_sampling": {"max_tokens": 16},
        "compaction": {"enabled": True, "keep_last_turns": 0, "summary_max_tokens": 32},
    }
    first = build_root_messages(
        TASK.question, context_meta(prepare_context(TASK.context)), config_from_dict(base)
    )
    first_prompt = len(chat_prompt_ids(tokenizer, first))
    window = first_prompt + 400  # room for the summary and a turn after it
    base["budget"]["context_window"] = window
    # The trigger sits just above the first prompt: one turn (reply + template + REPL note) crosses it.
    base["compaction"]["trigger_fraction"] = (first_prompt + 8) / window
    return base


async def test_real_engine_compaction_keeps_the_invariants(vllm_client):
    cfg = config_from_dict(tiny_window_config(vllm_client.tokenizer))
    records = await asyncio.gather(
        *(Episode(TASK, cfg, vllm_client, episode_id=f"compact-{i}", rubric=Rubric()).run() for i in range(2))
    )
    assert any(r.compactions for r in records), [r.stop_reason for r in records]
    for r in records:  # shown with -s: where each compaction happened and what it saved
        print(
            r.episode_id, r.stop_reason, [(c.at_turn, c.tokens_before, c.tokens_after) for c in r.compactions]
        )
    for record in records:
        assert not record.flags.infra_failure, record.flags
        summaries = [c for c in record.calls if c.role == "summary"]
        assert [c.summary_call_id for c in record.compactions] == [c.id for c in summaries]
        assert all(c.error is None and c.completion_token_ids for c in summaries)
        roots = [c for c in record.calls if c.role == "root"]
        samples = record.root_samples()
        for k, sample in enumerate(samples):
            assert sample.available and sample.consistent
            calls = [c for c in roots if c.segment == k]
            assert calls, f"segment {k} of {record.episode_id} has no root call"
            for call in calls:
                prompt = record.call_prompt_ids(call)
                assert prompt and call.prompt_in_sample and sample.token_ids[: len(prompt)] == prompt
            masked = [t for t, m in zip(sample.token_ids, sample.loss_mask, strict=True) if m]
            assert masked == [t for c in calls for t in c.completion_token_ids]
            masked_logprobs = [lp for lp, m in zip(sample.logprobs, sample.loss_mask, strict=True) if m]
            assert masked_logprobs == [lp for c in calls for lp in c.logprobs]
        window = record.config["budget"]["context_window"]
        trigger = record.config["compaction"]["trigger_fraction"] * window
        for k, compaction in enumerate(record.compactions, start=1):
            assert compaction.tokens_before >= trigger
            first = next(c for c in roots if c.segment == k)
            assert (first.id, first.num_prompt_tokens) == (
                f"root-{compaction.at_turn}",
                compaction.tokens_after,
            )
            assert compaction.messages[0] == record.root_messages[0]
    samples, dropped = samples_from_records(records)
    assert dropped == {}
    for record in records:
        mine = [s for s in samples if s.episode_id == record.episode_id]
        assert [s.segment for s in mine] == list(range(len(record.compactions) + 1))
        assert len({s.advantage for s in mine}) == 1

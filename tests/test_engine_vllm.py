"""vLLM-in-Ray engine, end to end on the real default model (no mocks).

Nothing here asserts what the model says: bf16 near-ties flip a tiny model's wording between
CPUs (AMD EPYC and Intel Xeon answer the same greedy question differently). The tests check ids,
finish reasons against the ids, determinism on this machine, and the engine's sampled and prompt
logprobs against a float32 transformers recomputation (`tests/engine_checks.py`).

All tests share the session's two-replica `vllm_client`. Order matters only at the end: the
replica-kill test runs last in this file and waits for the replacement, so later users of the
fixture find two healthy replicas again.
"""

from __future__ import annotations

import asyncio
import json

import pytest
import ray

from rlm_env.models import ModelError, SamplingParams, chat_prompt_ids
from rlm_env.models.logprob_check import (
    compare_logprobs,
    recompute_logprobs,
    sequence_logprobs,
    within_engine_tolerance,
)
from rlm_env.models.throughput import measure_batch_throughput
from tests.engine_checks import (
    assert_finish_consistent,
    assert_ids_decode_to_text,
    assert_logprobs_agree,
    assert_sampled_logprobs_agree,
)

pytestmark = [pytest.mark.engine, pytest.mark.slow]

GREEDY = SamplingParams(max_tokens=24, temperature=0.0)
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


def user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


async def test_token_ids_logprobs_and_determinism(vllm_client, reference_model):
    """No assertion on the wording (bf16 near-ties flip it between CPUs): ids, the engine's
    logprobs against a float32 recomputation, prompt logprobs, and determinism."""
    sampling = SamplingParams(max_tokens=40, temperature=0.0)
    completion = await vllm_client.generate(QUESTION, sampling, session_id="numerics")
    again = await vllm_client.generate(QUESTION, sampling, session_id="numerics")  # same replica
    tokenizer = vllm_client.tokenizer
    assert completion.prompt_token_ids == chat_prompt_ids(tokenizer, QUESTION)
    assert completion.token_ids_available
    assert again.completion_token_ids == completion.completion_token_ids, "greedy is not deterministic"
    # Not bit-equal: the repeat's prompt comes from the prefix cache (a different computation).
    assert_logprobs_agree(again.logprobs, completion.logprobs, "the same request twice")
    assert_ids_decode_to_text(completion, tokenizer)
    assert_finish_consistent(completion, 40, {tokenizer.eos_token_id})
    assert_sampled_logprobs_agree(completion, reference_model, 1.0, "vLLM bf16 greedy, sampled tokens")
    # Prompt logprobs: the engine scores the whole sequence (prompt + its own answer) in one
    # prefill; the learner does the same pass in float32.
    sequence = completion.prompt_token_ids + completion.completion_token_ids
    scored = await vllm_client.prompt_logprobs(sequence)
    assert len(scored) == len(sequence) and scored[0] is None
    assert all(lp <= 0.0 for lp in scored[1:])
    assert_logprobs_agree(scored, sequence_logprobs(reference_model, sequence), "vLLM bf16 prompt logprobs")
    # The same tokens scored by prefill and by decoding agree too (two code paths in vLLM).
    assert_logprobs_agree(scored[-len(completion.logprobs) :], completion.logprobs, "prefill vs decode")
    assert completion.weight_version == vllm_client.weight_version
    assert completion.replica in vllm_client.replica_actors()


async def test_sampled_logprobs_follow_the_temperature(vllm_client, reference_model):
    """At temperature 0.7 the engine reports the sampling policy's logprobs, log_softmax(z / 0.7):
    they match a recomputation at 0.7, and not one at 1.0 (so the check can tell them apart)."""
    completion = await vllm_client.generate(
        user("Tell me about the sea."), SamplingParams(max_tokens=32, temperature=0.7, seed=11)
    )
    assert_sampled_logprobs_agree(completion, reference_model, 0.7, "vLLM bf16 at temperature 0.7")
    wrong = recompute_logprobs(
        reference_model, completion.prompt_token_ids, completion.completion_token_ids, temperature=1.0
    )
    assert not within_engine_tolerance(compare_logprobs(completion.logprobs, wrong))


async def test_token_prompt_gives_same_greedy_answer(vllm_client):
    ids = chat_prompt_ids(vllm_client.tokenizer, QUESTION)
    from_messages = await vllm_client.generate(QUESTION, GREEDY)
    from_ids = await vllm_client.generate([], GREEDY, prompt_token_ids=ids)
    assert from_ids.prompt_token_ids == ids
    assert from_ids.completion_token_ids == from_messages.completion_token_ids


async def test_finish_reason_and_seeded_sampling(vllm_client):
    sampling = SamplingParams(max_tokens=8, temperature=1.0, seed=7)
    completion = await vllm_client.generate(user("Write a long story about a dragon."), sampling)
    again = await vllm_client.generate(user("Write a long story about a dragon."), sampling)
    # Whether the model ends before 8 tokens is its business; the reason must match the ids.
    assert_finish_consistent(completion, 8, {vllm_client.tokenizer.eos_token_id})
    assert len(completion.completion_token_ids) == len(completion.logprobs)
    assert again.completion_token_ids == completion.completion_token_ids  # per-request seed


async def test_session_routing_is_sticky_and_spreads(vllm_client):
    sessions = [f"episode-{i}" for i in range(8)]
    first = {}
    for turn in range(3):
        replies = await asyncio.gather(
            *(vllm_client.generate(user(f"Turn {turn}"), GREEDY, session_id=s) for s in sessions)
        )
        for session, reply in zip(sessions, replies, strict=True):
            assert first.setdefault(session, reply.replica) == reply.replica
    assert len(set(first.values())) == 2, first


async def test_generate_many_keeps_order_and_spreads(vllm_client):
    prompts = [user(f"Repeat exactly this number: {n}") for n in range(12)]
    results = await vllm_client.generate_many(prompts, SamplingParams(max_tokens=12, temperature=0.0))
    assert len(results) == 12
    for prompt, result in zip(prompts, results, strict=True):
        assert result.prompt_token_ids == chat_prompt_ids(vllm_client.tokenizer, prompt)
    assert len({r.replica for r in results}) == 2


async def test_request_timeout_raises_model_error(vllm_client):
    saved = vllm_client.request_timeout_s
    vllm_client.request_timeout_s = 0.2
    try:
        with pytest.raises(ModelError, match="timed out"):
            await vllm_client.generate(user("Write a very long essay."), SamplingParams(max_tokens=2000))
    finally:
        vllm_client.request_timeout_s = saved
    # The request was cancelled inside the replica too (not left generating 2000 tokens).
    for _ in range(50):
        if sum(s["inflight"] for s in await vllm_client.stats()) == 0:
            break
        await asyncio.sleep(0.1)
    assert sum(s["inflight"] for s in await vllm_client.stats()) == 0
    assert (await vllm_client.generate(QUESTION, GREEDY)).completion_token_ids


async def test_reload_weights_reaches_the_engine_and_restores(
    vllm_client, default_model_path, reference_model, tmp_path_factory
):
    """After a reload the engine's logprobs match the learner's model with the new weights (what
    a trainer checks after each weight sync), and no longer match the old ones."""
    from safetensors.torch import load_file, save_file

    from rlm_env.models.logprob_check import load_reference_model

    before = await vllm_client.generate(QUESTION, GREEDY, session_id="reload")
    sequence = before.prompt_token_ids + before.completion_token_ids
    scored_before = await vllm_client.prompt_logprobs(sequence, session_id="reload")
    weights = load_file(str(default_model_path / "model.safetensors"))
    for name in weights:
        if "mlp.down_proj" in name:  # silence every MLP: a very different model
            weights[name].zero_()
    perturbed = tmp_path_factory.mktemp("perturbed")
    save_file(weights, str(perturbed / "model.safetensors"))
    version = await vllm_client.reload_weights(str(perturbed))
    changed = await vllm_client.generate(QUESTION, GREEDY, session_id="reload")
    assert changed.weight_version == version == before.weight_version + 1
    learner = load_reference_model(default_model_path)  # float32, the same perturbation in memory
    for name, parameter in learner.named_parameters():
        if "mlp.down_proj" in name:
            parameter.data.zero_()
    assert_sampled_logprobs_agree(changed, learner, 1.0, "after reload, vs the perturbed learner")
    scored = await vllm_client.prompt_logprobs(sequence, session_id="reload")
    assert_logprobs_agree(scored, sequence_logprobs(learner, sequence), "after reload, prompt logprobs")
    stale = compare_logprobs(scored, sequence_logprobs(reference_model, sequence))
    assert not within_engine_tolerance(stale), f"the old weights still explain the engine: {stale}"
    del learner
    restored_version = await vllm_client.reload_weights(str(default_model_path))
    restored = await vllm_client.generate(QUESTION, GREEDY, session_id="reload")
    assert restored.weight_version == restored_version
    assert restored.completion_token_ids == before.completion_token_ids
    restored_scores = compare_logprobs(
        await vllm_client.prompt_logprobs(sequence, session_id="reload"), scored_before
    )
    assert restored_scores["max_abs"] < 1e-3, restored_scores  # same weights, same kernels


async def test_batch_throughput_against_direct_engine(vllm_client):
    prompts = [user(f"Give one short fact about the number {n}.") for n in range(32)]
    report = await measure_batch_throughput(
        vllm_client, prompts, SamplingParams(max_tokens=32, temperature=0.0)
    )
    print("\n[throughput]", json.dumps(report))
    assert report["client"]["requests"] == report["direct"]["requests"] == 32
    assert report["client"]["completion_tokens"] > 0 and report["direct"]["completion_tokens"] > 0


async def test_killed_replica_mid_batch_is_replaced_and_retried(vllm_client):
    prompts = [user(f"Write a short poem about the number {n}.") for n in range(16)]
    batch = asyncio.ensure_future(
        vllm_client.generate_many(prompts, SamplingParams(max_tokens=48, temperature=0.0))
    )
    await asyncio.sleep(0.5)  # let requests reach both replicas
    victim_name, victim = next(iter(vllm_client.replica_actors().items()))
    ray.kill(victim, no_restart=True)
    results = await batch
    assert len(results) == 16 and all(r.completion_token_ids for r in results)
    retried = [r for r in results if r.extras.get("retries")]
    assert retried, "expected requests from the killed replica to be retried"
    assert all(r.extras["retries"][0]["replica"] == victim_name for r in retried)
    # The replacement comes up (same name, new actor) and serves the current weights.
    await asyncio.wait_for(vllm_client.wait_ready(), timeout=180)
    assert vllm_client.replica_actors()[victim_name] is not victim
    stats = await vllm_client.stats()
    assert {s["weight_version"] for s in stats} == {vllm_client.weight_version}


async def test_retries_exhausted_raise_model_error(vllm_client):
    saved = vllm_client.config
    # A client whose retry budget is zero: the death of the replica is reported, not hidden.
    vllm_client.config = saved.model_copy(update={"max_retries": 0})
    try:
        task = asyncio.ensure_future(
            vllm_client.generate(
                user("Write a long essay."), SamplingParams(max_tokens=400), session_id="doomed"
            )
        )
        await asyncio.sleep(0.5)
        slot = vllm_client._pick("doomed")
        ray.kill(slot.actor, no_restart=True)
        with pytest.raises(ModelError, match="retries ran out"):
            await task
    finally:
        vllm_client.config = saved
    await asyncio.wait_for(vllm_client.wait_ready(), timeout=180)

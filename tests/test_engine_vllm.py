"""vLLM-in-Ray engine, end to end on the real default model (no mocks).

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
from rlm_env.models.throughput import measure_batch_throughput

pytestmark = [pytest.mark.engine, pytest.mark.slow]

GREEDY = SamplingParams(max_tokens=24, temperature=0.0)
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


def user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


async def test_token_ids_and_logprobs_match_tokenizer(vllm_client):
    completion = await vllm_client.generate(QUESTION, SamplingParams(max_tokens=40, temperature=0.0))
    tokenizer = vllm_client.tokenizer
    assert completion.prompt_token_ids == chat_prompt_ids(tokenizer, QUESTION)
    assert completion.token_ids_available
    assert len(completion.logprobs) == len(completion.completion_token_ids) > 0
    assert all(lp <= 0.0 for lp in completion.logprobs)
    assert tokenizer.decode(completion.completion_token_ids, skip_special_tokens=True) == completion.text
    assert "Paris" in completion.text
    # Ended by the end token: it is kept in the ids (trainers need it), not in the text.
    assert completion.finish_reason == "stop"
    assert completion.completion_token_ids[-1] == tokenizer.eos_token_id
    assert completion.weight_version == vllm_client.weight_version
    assert completion.replica in vllm_client.replica_actors()


async def test_token_prompt_gives_same_greedy_answer(vllm_client):
    ids = chat_prompt_ids(vllm_client.tokenizer, QUESTION)
    from_messages = await vllm_client.generate(QUESTION, GREEDY)
    from_ids = await vllm_client.generate([], GREEDY, prompt_token_ids=ids)
    assert from_ids.prompt_token_ids == ids
    assert from_ids.completion_token_ids == from_messages.completion_token_ids


async def test_length_finish_and_sampling_logprobs(vllm_client):
    completion = await vllm_client.generate(
        user("Write a long story about a dragon."), SamplingParams(max_tokens=8, temperature=1.0, seed=7)
    )
    assert completion.finish_reason == "length"
    assert len(completion.completion_token_ids) == len(completion.logprobs) == 8


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
    assert (await vllm_client.generate(QUESTION, GREEDY)).text


async def test_reload_weights_changes_and_restores_generation(
    vllm_client, default_model_path, tmp_path_factory
):
    from safetensors.torch import load_file, save_file

    before = await vllm_client.generate(QUESTION, GREEDY)
    weights = load_file(str(default_model_path / "model.safetensors"))
    for name in weights:
        if "mlp.down_proj" in name:  # silence every MLP: a model that cannot say "Paris"
            weights[name].zero_()
    perturbed = tmp_path_factory.mktemp("perturbed")
    save_file(weights, str(perturbed / "model.safetensors"))
    version = await vllm_client.reload_weights(str(perturbed))
    changed = await vllm_client.generate(QUESTION, GREEDY)
    assert changed.weight_version == version == before.weight_version + 1
    assert changed.completion_token_ids != before.completion_token_ids
    restored_version = await vllm_client.reload_weights(str(default_model_path))
    restored = await vllm_client.generate(QUESTION, GREEDY)
    assert restored.weight_version == restored_version
    assert restored.completion_token_ids == before.completion_token_ids


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
    assert len(results) == 16 and all(r.text for r in results)
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

"""The transformers engine on the converted default model (real weights, CPU)."""

from __future__ import annotations

import pytest

from rlm_env.models import SamplingParams, chat_prompt_ids
from rlm_env.models.hf_engine import TransformersClient

pytestmark = [pytest.mark.engine, pytest.mark.slow]

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def hf_client(default_model_path):
    return TransformersClient(str(default_model_path))


async def test_greedy_generation_with_ids_and_logprobs(hf_client):
    completion = await hf_client.generate(QUESTION, SamplingParams(max_tokens=40, temperature=0.0))
    tokenizer = hf_client.tokenizer
    assert "Paris" in completion.text
    assert completion.prompt_token_ids == chat_prompt_ids(tokenizer, QUESTION)
    assert len(completion.logprobs) == len(completion.completion_token_ids) > 0
    assert all(lp <= 0.0 for lp in completion.logprobs)
    assert completion.finish_reason == "stop"
    assert completion.completion_token_ids[-1] == tokenizer.eos_token_id
    assert tokenizer.decode(completion.completion_token_ids, skip_special_tokens=True) == completion.text


async def test_sampling_token_prompt_and_stop_string(hf_client):
    ids = chat_prompt_ids(hf_client.tokenizer, QUESTION)
    sampled = await hf_client.generate(
        [], SamplingParams(max_tokens=6, temperature=0.8, seed=3), prompt_token_ids=ids
    )
    again = await hf_client.generate(
        [], SamplingParams(max_tokens=6, temperature=0.8, seed=3), prompt_token_ids=ids
    )
    assert sampled.prompt_token_ids == ids
    assert sampled.completion_token_ids == again.completion_token_ids  # per-request seed
    assert len(sampled.logprobs) == len(sampled.completion_token_ids)
    stopped = await hf_client.generate(
        QUESTION, SamplingParams(max_tokens=40, temperature=0.0, stop=("Paris",))
    )
    assert "Paris" not in stopped.text and stopped.finish_reason == "stop"

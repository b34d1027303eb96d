"""The transformers engine on the converted default model (real weights, CPU).

No assertion on what the model says (bf16 near-ties flip its wording between CPUs): its
logprobs against a float32 recomputation, ids, determinism, and stop strings cut where asked.
"""

from __future__ import annotations

import pytest

from rlm_env.models import SamplingParams, chat_prompt_ids
from rlm_env.models.hf_engine import TransformersClient
from tests.engine_checks import (
    assert_finish_consistent,
    assert_ids_decode_to_text,
    assert_sampled_logprobs_agree,
)

pytestmark = [pytest.mark.engine, pytest.mark.slow]

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def hf_client(default_model_path):
    return TransformersClient(str(default_model_path))


async def test_greedy_generation_with_ids_and_logprobs(hf_client, reference_model):
    sampling = SamplingParams(max_tokens=40, temperature=0.0)
    completion = await hf_client.generate(QUESTION, sampling)
    again = await hf_client.generate(QUESTION, sampling)
    tokenizer = hf_client.tokenizer
    assert completion.prompt_token_ids == chat_prompt_ids(tokenizer, QUESTION)
    assert again.completion_token_ids == completion.completion_token_ids, "greedy is not deterministic"
    assert_finish_consistent(completion, 40, hf_client._eos_ids())
    assert_ids_decode_to_text(completion, tokenizer)
    assert_sampled_logprobs_agree(completion, reference_model, 1.0, "transformers bf16 greedy")


async def test_sampling_token_prompt_and_stop_string(hf_client, reference_model):
    ids = chat_prompt_ids(hf_client.tokenizer, QUESTION)
    sampling = SamplingParams(max_tokens=6, temperature=0.8, seed=3)
    sampled = await hf_client.generate([], sampling, prompt_token_ids=ids)
    again = await hf_client.generate([], sampling, prompt_token_ids=ids)
    assert sampled.prompt_token_ids == ids
    assert sampled.completion_token_ids == again.completion_token_ids  # per-request seed
    assert_sampled_logprobs_agree(sampled, reference_model, 0.8, "transformers bf16 at temperature 0.8")
    # A stop string taken from the model's own greedy answer (whatever it is on this CPU):
    # the text is cut just before it.
    greedy = await hf_client.generate(QUESTION, SamplingParams(max_tokens=12, temperature=0.0))
    characters = [c for c in greedy.text[1:] if not c.isspace()]
    assert characters, f"no text to pick a stop string from: {greedy.text!r}"
    stop = characters[len(characters) // 2]
    stopped = await hf_client.generate(QUESTION, SamplingParams(max_tokens=12, temperature=0.0, stop=(stop,)))
    assert stopped.finish_reason == "stop" and stopped.extras["stop_reason"] == stop
    assert stopped.text == greedy.text[: greedy.text.index(stop)]

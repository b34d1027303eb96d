"""`rlm_env.models.logprob_check` on a tiny random llama (no engine, no checkpoint): the one-pass
recomputation equals token-by-token scoring, temperature divides the logits, comparisons
skip absent positions and refuse misaligned lists. The real-engine agreement is checked in
test_engine_vllm.py, test_engine_openai.py, test_engine_hf.py and test_episode_engine.py."""

from __future__ import annotations

import math

import pytest
import torch

from rlm_env.models.logprob_check import (
    ENGINE_MAX_ABS_TOLERANCE,
    ENGINE_MEAN_ABS_TOLERANCE,
    compare_logprobs,
    merge_comparisons,
    recompute_logprobs,
    sequence_logprobs,
    within_engine_tolerance,
)


@pytest.fixture(scope="module")
def tiny_model():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=97,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    return LlamaForCausalLM(config).eval()


def _one_at_a_time(model, ids: list[int], start: int, temperature: float = 1.0) -> list[float]:
    """Score each token with its own forward pass over its prefix (the slow, obvious way)."""
    out = []
    for position in range(start, len(ids)):
        with torch.no_grad():
            logits = model(torch.tensor([ids[:position]])).logits[0, -1].float() / temperature
        out.append(float(torch.log_softmax(logits, -1)[ids[position]]))
    return out


def test_one_pass_equals_prefix_by_prefix_scoring(tiny_model):
    prompt, completion = [5, 17, 3, 90, 44], [8, 8, 61, 2]
    got = recompute_logprobs(tiny_model, prompt, completion)
    expected = _one_at_a_time(tiny_model, prompt + completion, len(prompt))
    assert len(got) == len(completion)
    assert max(abs(a - b) for a, b in zip(got, expected, strict=True)) < 1e-5
    assert all(lp < 0 for lp in got)
    hot = recompute_logprobs(tiny_model, prompt, completion, temperature=0.5)
    slow_hot = _one_at_a_time(tiny_model, prompt + completion, len(prompt), 0.5)
    assert max(abs(a - b) for a, b in zip(hot, slow_hot, strict=True)) < 1e-5
    assert hot != got
    assert tiny_model.training is False


def test_sequence_layout_and_edge_cases(tiny_model):
    ids = [1, 2, 3, 4]
    scored = sequence_logprobs(tiny_model, ids)
    assert scored[0] is None and scored[1:] == recompute_logprobs(tiny_model, ids[:1], ids[1:])
    assert sequence_logprobs(tiny_model, []) == []
    assert recompute_logprobs(tiny_model, [1], []) == []
    with pytest.raises(ValueError, match="empty"):
        recompute_logprobs(tiny_model, [], [1])
    with pytest.raises(ValueError, match="temperature"):
        recompute_logprobs(tiny_model, [1], [2], temperature=0.0)
    tiny_model.train()  # a learner in training mode is scored in eval mode and given back as it was
    try:
        assert recompute_logprobs(tiny_model, [1], [2, 3]) == scored[1:3]
        assert tiny_model.training
    finally:
        tiny_model.eval()


def test_compare_and_merge():
    comparison = compare_logprobs([None, -1.0, -2.0, -0.5], [None, -1.1, -2.0, -0.1])
    assert comparison["n"] == 3
    assert math.isclose(comparison["mean_abs"], 0.5 / 3)
    assert math.isclose(comparison["max_abs"], 0.4)
    assert math.isclose(comparison["mean_signed"], (0.1 - 0.4) / 3)
    assert math.isclose(comparison["max_ratio"], math.exp(0.4))
    assert math.isclose(comparison["clipped_share"], 1 / 3)  # exp(-0.4) = 0.67 < 0.8
    with pytest.raises(ValueError, match="differ in length"):
        compare_logprobs([-1.0], [-1.0, -2.0])
    empty = compare_logprobs([None], [-1.0])
    assert empty["n"] == 0 and not within_engine_tolerance(empty)
    merged = merge_comparisons([comparison, compare_logprobs([-1.0], [-1.0]), empty])
    assert merged["n"] == 4 and math.isclose(merged["mean_abs"], 0.5 / 4)
    assert merged["max_abs"] == comparison["max_abs"]


def test_tolerance_accepts_bf16_noise_and_refuses_bias_or_outliers():
    exact = [-0.2, -1.5, -3.0, -0.01, -7.5, -2.2]
    noisy = [lp + (0.03 if i % 2 else -0.03) for i, lp in enumerate(exact)]  # bf16-sized noise
    assert within_engine_tolerance(compare_logprobs(noisy, exact))
    biased = [lp - 1.5 * ENGINE_MEAN_ABS_TOLERANCE for lp in exact]  # e.g. a wrong temperature
    assert not within_engine_tolerance(compare_logprobs(biased, exact))
    outlier = [*exact[:-1], exact[-1] - 2 * ENGINE_MAX_ABS_TOLERANCE]  # one token far off
    assert not within_engine_tolerance(compare_logprobs(outlier, exact))

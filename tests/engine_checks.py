"""Checks on real engines' completions that hold on any CPU.

A tiny model's wording is not a property of the code: bf16 near-ties flip the greedy answer
between an AMD EPYC and an Intel Xeon (the 135M model says "Paris" on one and "L'Étoile, ..."
on the other). What does hold everywhere, and says more about the engine, is checked here:
the engine's logprobs agree with a float32 transformers recomputation of the same ids within
the tolerances of `rlm_env.models.logprob_check` (their comments say why those values), the
ids re-decode to the text, and the finish reason is consistent with the ids.
"""

from __future__ import annotations

from typing import Any

from rlm_env.models.logprob_check import (
    ENGINE_MAX_ABS_TOLERANCE,
    ENGINE_MEAN_ABS_TOLERANCE,
    compare_logprobs,
    recompute_logprobs,
    within_engine_tolerance,
)


def assert_logprobs_agree(engine: list[float | None], reference: list[float | None], what: str) -> dict:
    """Engine logprobs within the engine tolerance of the reference; returns the comparison."""
    comparison = compare_logprobs(engine, reference)
    print(f"\n[logprobs] {what}: {comparison}")
    assert within_engine_tolerance(comparison), (
        f"{what}: engine vs float32 recomputation {comparison}, tolerance mean <= "
        f"{ENGINE_MEAN_ABS_TOLERANCE}, max <= {ENGINE_MAX_ABS_TOLERANCE}"
    )
    return comparison


def assert_sampled_logprobs_agree(
    completion: Any, reference_model: Any, temperature: float, what: str
) -> dict:
    """The completion's logprobs of its own sampled ids against the reference model's
    (greedy requests report temperature-1 logprobs: pass temperature 1.0 for them)."""
    assert len(completion.logprobs) == len(completion.completion_token_ids) > 0
    assert all(lp <= 0.0 for lp in completion.logprobs)
    reference = recompute_logprobs(
        reference_model, completion.prompt_token_ids, completion.completion_token_ids, temperature=temperature
    )
    return assert_logprobs_agree(completion.logprobs, reference, what)


def assert_finish_consistent(completion: Any, max_tokens: int, eos_ids: set[int]) -> None:
    """ "length" means exactly max_tokens ids; "stop" (no stop strings asked) means the last id is
    an end token, kept in the ids (trainers need it) and not in the text."""
    ids = completion.completion_token_ids
    assert completion.finish_reason in ("stop", "length"), completion.finish_reason
    if completion.finish_reason == "length":
        assert len(ids) == max_tokens
    else:
        assert 0 < len(ids) <= max_tokens and ids[-1] in eos_ids


def assert_ids_decode_to_text(completion: Any, tokenizer: Any) -> None:
    decoded = tokenizer.decode(completion.completion_token_ids, skip_special_tokens=True)
    assert decoded == completion.text

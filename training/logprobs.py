"""Recompute, with the learner's model, the logprobs an engine reported for its sampled tokens.

A small stand-in for `rlm_env/models/logprob_check.py` (written on another branch): the trainer
needs it now to check that after a weight sync the engine samples from the learner's updated
policy. Computed in fp32 without autocast, at the sampling temperature.
"""

from __future__ import annotations

from typing import Any

import torch

from training.losses import token_logprobs


def completion_logprobs(
    model: Any, prompt_ids: list[int], completion_ids: list[int], temperature: float = 1.0
) -> list[float]:
    """log p(completion token | everything before it) under `model`, one per completion token."""
    ids = torch.tensor([list(prompt_ids) + list(completion_ids)], device=next(model.parameters()).device)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            logits = model(input_ids=ids).logits
    finally:
        model.train(was_training)
    logp = token_logprobs(logits[:, :-1], ids[:, 1:], temperature)[0]
    return [float(x) for x in logp[len(prompt_ids) - 1 :].cpu()]


def mean_abs_diff(a: list[float], b: list[float]) -> float:
    assert len(a) == len(b) and a, (len(a), len(b))
    return sum(abs(x - y) for x, y in zip(a, b, strict=True)) / len(a)

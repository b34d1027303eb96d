"""The losses, as plain tensor functions (so they can be checked against a hand computation).

All of them take per-token tensors aligned with the *predicted* positions: position t holds the
logprob of token t+1 given tokens 0..t, and `mask[t]` is the loss mask of token t+1. The learner
does that shift once (`shift_for_targets`); nothing here shifts again.

Normalisation is passed in as a number (`normalizer`) rather than derived from the micro-batch,
so that gradient accumulation over micro-batches, and data-parallel workers, each computing a
slice of one step, add up to exactly the loss of the whole step:
- token-level: the normaliser is the step's total loss tokens, each micro-batch contributes
  sum(loss * mask) / normaliser;
- sequence-level: each sequence's tokens are averaged first (weight 1/len_i) and the normaliser
  is the step's number of sequences.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


def shift_for_targets(
    input_ids: torch.Tensor, mask: torch.Tensor, *extra: torch.Tensor
) -> tuple[torch.Tensor, ...]:
    """Targets are tokens 1..T-1; masks and per-token values follow their targets."""
    return (input_ids[:, 1:], mask[:, 1:].to(torch.float32), *(x[:, 1:] for x in extra))


def token_logprobs(
    logits: torch.Tensor, targets: torch.Tensor, temperature: float | torch.Tensor = 1.0
) -> torch.Tensor:
    """log p(target) per position, computed in fp32 (logits [B, T, V] predict targets [B, T]).
    `temperature` is a number or one per row ([B]); 0 (greedy) counts as 1."""
    logits = logits.float()
    if isinstance(temperature, torch.Tensor):
        t = torch.where(temperature > 0, temperature, torch.ones_like(temperature)).to(logits.dtype)
        logits = logits / t.view(-1, 1, 1)
    elif temperature not in (0.0, 1.0):
        logits = logits / temperature
    flat = -F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="none")
    return flat.view(targets.shape)


def token_weights(mask: torch.Tensor, normalization: str, normalizer: float) -> torch.Tensor:
    """Per-token weights so that sum(weights * per_token_loss) is this slice's share of the step."""
    if normalization == "token":
        return mask / normalizer
    if normalization == "sequence":
        lengths = mask.sum(dim=1, keepdim=True).clamp(min=1.0)
        return mask / lengths / normalizer
    raise ValueError(f"unknown normalization {normalization!r}")


def sft_loss(logp: torch.Tensor, mask: torch.Tensor, normalization: str, normalizer: float) -> torch.Tensor:
    """Masked negative log-likelihood."""
    return -(logp * token_weights(mask, normalization, normalizer)).sum()


@dataclass
class PGStats:
    loss_tokens: float
    clipped_tokens: float
    """Tokens where the clipped surrogate was the one taken (its gradient is 0)."""
    ratio_sum: float
    kl_sum: float


def grpo_loss(
    logp: torch.Tensor,
    logp_sampled: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    clip_low: float,
    clip_high: float,
    normalization: str,
    normalizer: float,
    logp_ref: torch.Tensor | None = None,
    kl_coef: float = 0.0,
    has_logprobs: torch.Tensor | None = None,
) -> tuple[torch.Tensor, PGStats]:
    """Per-token clipped policy gradient (PPO/GRPO), plus k3 KL to a reference.

    ratio_t = exp(logp_t - logp_sampled_t); per-token loss = -min(ratio*A, clip(ratio)*A)
    + kl_coef * (exp(ref - logp) - (ref - logp) - 1). `advantages` is [B] (one per sequence).
    Rows with `has_logprobs` False use the on-policy fallback: logp_sampled = logp.detach(),
    so ratio = 1 and the gradient is the plain policy gradient A * grad logp.
    """
    if has_logprobs is not None:
        fallback = ~has_logprobs.view(-1, 1)
        logp_sampled = torch.where(fallback, logp.detach(), logp_sampled)
    ratio = torch.exp(logp - logp_sampled)
    adv = advantages.view(-1, 1).to(logp.dtype)
    unclipped = ratio * adv
    clipped = torch.clamp(ratio, 1.0 - clip_low, 1.0 + clip_high) * adv
    surrogate = torch.minimum(unclipped, clipped)
    per_token = -surrogate
    kl = None
    if logp_ref is not None and kl_coef > 0:
        delta = logp_ref - logp
        kl = torch.exp(delta) - delta - 1.0
        per_token = per_token + kl_coef * kl
    weights = token_weights(mask, normalization, normalizer)
    loss = (per_token * weights).sum()
    with torch.no_grad():
        is_clipped = (clipped < unclipped) & (mask > 0)
        stats = PGStats(
            loss_tokens=float(mask.sum()),
            clipped_tokens=float(is_clipped.sum()),
            ratio_sum=float((ratio * mask).sum()),
            kl_sum=float((kl * mask).sum()) if kl is not None else 0.0,
        )
    return loss, stats

"""Shaping terms computed from the episode record, and the infrastructure rule.

Each term is a function of the `EpisodeRecord` (named argument `record`), so a rubric can
weight it beside correctness:

- `format_reward` in [0, 1]: half for having run at least one ```repl block, half for an
  answer confirmed by executed code (not a text FINAL fallback, not extracted after a limit).
- `cost_penalty` in [-(sum of coefficients), 0]: root tokens, sub-call tokens and turns, each
  as a fraction of its budget limit (clipped to [0, 1]) times its coefficient. The budget
  snapshot (`record.budget`, see `episode.budget.BudgetLedger.snapshot`) is read defensively:
  spent figures fall back to sums over `record.calls`, and a term whose limit is unknown is
  skipped.
- `infra_failure` in {0, 1}: the environment failed (engine down, sandbox crashed). Such an
  episode is not the model's mistake: the rubric gives it reward 0.0 with `mask` 0 so trainers
  drop it, instead of counting a penalty against the policy.
"""

from __future__ import annotations

from typing import Any

from rlm_env.episode.record import EpisodeRecord

INFRA_STOP_REASONS = frozenset({"model_error", "sandbox_error"})


def format_reward(record: EpisodeRecord) -> float:
    """0.5 for at least one executed repl block + 0.5 for an answer confirmed by code."""
    ran_code = bool(record.cells)
    confirmed = record.answer.status == "confirmed"
    return 0.5 * ran_code + 0.5 * confirmed


def infra_failure(record: EpisodeRecord) -> float:
    """1.0 when the episode failed for infrastructure reasons (never the model's fault)."""
    flagged = record.flags.infra_failure or bool(record.flags.infra_errors)
    return float(flagged or record.stop_reason in INFRA_STOP_REASONS)


def _num(d: dict[str, Any], *keys: str) -> float | None:
    for key in keys:
        v = d.get(key)
        if isinstance(v, int | float) and not isinstance(v, bool):
            return float(v)
    return None


def cost_fractions(record: EpisodeRecord) -> dict[str, float]:
    """Spent / limit for root tokens, sub-call tokens and root turns (only where a limit is known)."""
    budget = record.budget if isinstance(record.budget, dict) else {}
    limits = budget.get("limits") if isinstance(budget.get("limits"), dict) else {}
    limits = {**budget, **limits}
    root_calls = [c for c in record.calls if c.role == "root" and c.depth == record.depth]
    sub_calls = [c for c in record.calls if c.role == "sub"]
    spent = {
        "root_tokens": _num(budget, "root_completion_tokens", "root_tokens"),
        "sub_tokens": None,
        "turns": _num(budget, "root_turns", "turns"),
    }
    if spent["root_tokens"] is None:
        spent["root_tokens"] = float(sum(c.num_completion_tokens for c in root_calls))
    sub_p, sub_c = _num(budget, "sub_prompt_tokens"), _num(budget, "sub_completion_tokens")
    if sub_p is not None or sub_c is not None:
        spent["sub_tokens"] = (sub_p or 0.0) + (sub_c or 0.0)
    else:
        spent["sub_tokens"] = _num(budget, "sub_tokens")
        if spent["sub_tokens"] is None:
            spent["sub_tokens"] = float(sum(c.num_prompt_tokens + c.num_completion_tokens for c in sub_calls))
    if spent["turns"] is None:
        spent["turns"] = float(len(root_calls))
    limit = {
        "root_tokens": _num(limits, "max_root_tokens"),
        "sub_tokens": _num(limits, "max_sub_tokens", "max_sub_call_tokens"),
        "turns": _num(limits, "max_root_turns", "max_turns"),
    }
    return {k: min(1.0, max(0.0, spent[k] / limit[k])) for k in spent if limit[k] and spent[k] is not None}


def cost_penalty(
    record: EpisodeRecord,
    root_tokens: float = 1.0,
    sub_tokens: float = 1.0,
    turns: float = 1.0,
    **kwargs: Any,
) -> float:
    """Minus the weighted budget fractions spent (0.0 = free; the coefficients bound it)."""
    coef = {"root_tokens": root_tokens, "sub_tokens": sub_tokens, "turns": turns}
    return -sum(coef[k] * v for k, v in cost_fractions(record).items())

"""Rewards: scorers (answer vs expected), shaping terms (from the episode record) and the rubric
that weights them, keeping infrastructure failures out of the model's score."""

from rewards.rubric import Rubric, RubricConfig, call_with_pool
from rewards.scorers import (
    SCORERS,
    ascore_answer,
    contains,
    exact,
    llm_judge,
    multiple_choice,
    normalize,
    numeric,
    pair_f1,
    score_answer,
    set_f1,
)
from rewards.shaping import cost_fractions, cost_penalty, format_reward, infra_failure

__all__ = [
    "SCORERS",
    "Rubric",
    "RubricConfig",
    "ascore_answer",
    "call_with_pool",
    "contains",
    "cost_fractions",
    "cost_penalty",
    "exact",
    "format_reward",
    "infra_failure",
    "llm_judge",
    "multiple_choice",
    "normalize",
    "numeric",
    "pair_f1",
    "score_answer",
    "set_f1",
]

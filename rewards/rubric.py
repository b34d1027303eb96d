"""The rubric: reward components, weighted into one reward, with infra failures kept out.

A `Rubric` holds named reward functions (sync or async) and a frozen `RubricConfig` with the
weight of each. `await rubric.score(record, task, judge=None)` calls every function with only
the named arguments it accepts, drawn from the pool {answer, expected, record, task, judge,
info, question}, and returns each component, the weighted total `reward`, `infra_failure`
and `mask` (1 = train on it, 0 = drop it). It also stores the result in `record.rewards`.

Default components:

- `correctness`: the task's scorer (`task.scorer`, default "exact") on the answer, counted
  only for the answer statuses in `scored_statuses` (by default confirmed by code or a text
  FINAL fallback; an answer extracted after a limit scores 0);
- `correctness_any`: the same score whatever the status (logged; weight 0 by default);
- `format`: `shaping.format_reward`; `cost`: `shaping.cost_penalty` with the coefficients.

Infrastructure failures (the record's flags, an infra stop reason, or an exception carrying
`infra = True` from the judge while scoring, as a model client's `ModelError` does) give
`reward` 0.0, `infra_failure` 1.0 and `mask` 0.0, and set the record's `flags.infra_failure`
too: `EpisodeRecord.training_exclusion()` is the one rule every trainer reads, so the rubric's
verdict must be visible there, not only in `rewards`. A non-finite component (a custom reward
function returning NaN) is kept as it is: the record writes and reads it back, and
`training_exclusion()` leaves the episode out ("non_finite_reward").

The judge is passed in (`judge=`, an async callable prompt -> text); rewards import nothing
from the engines.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from rewards.scorers import ascore_answer
from rewards.shaping import cost_penalty, format_reward, infra_failure
from rlm_env.episode.record import EpisodeRecord


class RubricConfig(BaseModel):
    """Weights and coefficients of the default rubric."""

    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)

    weights: dict[str, float] = Field(
        default_factory=lambda: {"correctness": 1.0, "correctness_any": 0.0, "format": 0.0, "cost": 0.0}
    )
    """Weight of each component by name in the total `reward`; a component missing here
    weighs 0 (it is still computed and logged)."""
    cost_root_tokens: float = 1.0
    """Coefficient of the root-token fraction (root completion tokens / max_root_tokens)."""
    cost_sub_tokens: float = 1.0
    """Coefficient of the sub-call token fraction (sub-call tokens / max_sub_tokens)."""
    cost_turns: float = 1.0
    """Coefficient of the turn fraction (root turns / max_root_turns)."""
    scored_statuses: tuple[str, ...] = ("confirmed", "fallback_text")
    """Answer statuses that can earn `correctness` ("extracted" and "none" score 0)."""
    scorer_kwargs: dict[str, dict[str, Any]] = Field(default_factory=dict)
    """Extra options per scorer name, e.g. {"numeric": {"tolerance": 1}}."""
    default_scorer: str = "exact"
    """Scorer used when the task names none."""


def _call_args(fn: Callable[..., Any], pool: dict[str, Any]) -> dict[str, Any]:
    params = inspect.signature(fn).parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return dict(pool)
    names = {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    return {k: v for k, v in pool.items() if k in names}


async def call_with_pool(fn: Callable[..., Any], pool: dict[str, Any]) -> Any:
    """Call `fn` with the pool entries it names (all of them if it takes **kwargs); await it
    when it returns an awaitable."""
    result = fn(**_call_args(fn, pool))
    if inspect.isawaitable(result):
        result = await result
    return result


class Rubric:
    """Named reward functions plus weights (see the module docstring)."""

    def __init__(
        self, config: RubricConfig | None = None, functions: dict[str, Callable[..., Any]] | None = None
    ):
        self.config = config or RubricConfig()
        self.functions: dict[str, Callable[..., Any]] = {
            "correctness": self._correctness,
            "correctness_any": functools.partial(self._correctness, any_status=True),
            "format": format_reward,
            "cost": functools.partial(
                cost_penalty,
                root_tokens=self.config.cost_root_tokens,
                sub_tokens=self.config.cost_sub_tokens,
                turns=self.config.cost_turns,
            ),
        }
        self.functions.update(functions or {})

    async def _correctness(
        self,
        answer: Any,
        expected: Any,
        record: EpisodeRecord,
        task: Any = None,
        judge: Any = None,
        question: str | None = None,
        any_status: bool = False,
    ) -> float:
        if not any_status and record.answer.status not in self.config.scored_statuses:
            return 0.0
        if record.answer.status == "none" or expected is None:
            return 0.0
        name = (getattr(task, "scorer", None) if task is not None else None) or record.task.get("scorer")
        name = name or self.config.default_scorer
        extra = self.config.scorer_kwargs.get(name, {})
        return await ascore_answer(name, answer, expected, judge=judge, question=question, **extra)

    async def score(self, record: EpisodeRecord, task: Any = None, judge: Any = None) -> dict[str, float]:
        """Every component, `reward`, `infra_failure` and `mask` (also written to record.rewards)."""
        out: dict[str, float] = dict.fromkeys(self.functions, 0.0)
        infra = bool(infra_failure(record))
        if not infra:
            pool = self._pool(record, task, judge)
            try:
                for name, fn in self.functions.items():
                    out[name] = float(await call_with_pool(fn, pool))
            except Exception as e:
                if not getattr(e, "infra", False):
                    raise
                infra = True
                out = dict.fromkeys(self.functions, 0.0)
                record.flags.infra_failure = True
                record.flags.infra_errors.append(f"reward judge failed: {type(e).__name__}: {e}")
        weights = self.config.weights
        reward = 0.0 if infra else sum(weights.get(k, 0.0) * v for k, v in out.items())
        out.update(reward=float(reward), infra_failure=float(infra), mask=0.0 if infra else 1.0)
        record.rewards = dict(out)
        return out

    def _pool(self, record: EpisodeRecord, task: Any, judge: Any) -> dict[str, Any]:
        described = record.task or {}
        expected = task.expected_answer if task is not None else described.get("expected_answer")
        question = task.question if task is not None else described.get("question")
        info = {
            "answer_status": record.answer.status,
            "answer_via": record.answer.via,
            "stop_reason": record.stop_reason,
            "task_metadata": (task.metadata if task is not None else described.get("metadata")) or {},
        }
        return {
            "answer": record.answer.content,
            "expected": expected,
            "record": record,
            "task": task,
            "judge": judge,
            "info": info,
            "question": question,
        }

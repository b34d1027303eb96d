"""Policy lag: which of this run's checkpoints sampled an episode, and dropping stale episodes.

With `max_policy_lag = k > 0` the rollouts of step n+1..n+k run while the learner trains step n
(`training/run.py`), so an episode trained at step m may have been sampled by an older policy
than the learner's (which holds the weights of step m-1). The importance ratio already uses the
logprobs the engine recorded when it sampled, so the gradient is correct for any lag; the bound
keeps the ratio near 1, where clipping rarely bites.

How an episode's sampling step is read, from the record alone (`ModelCall.checkpoint`, which the
engines set from the name each sync gives them: "<run>/base" is step 0, "<run>/step-<n>" step n):
the oldest step among the calls that would be trained (root calls; sub-calls too when they are
trained). A call with no name of this run (the weights changed while it was in flight, so it
mixes two policies, or an engine that names no checkpoint) counts as the step the engines
served when its rollout batch was launched: every call of the batch started at or after it, so
this never understates the lag. Episodes whose lag exceeds the bound are dropped before group
statistics and counted (`data/stale_dropped`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from rlm_env.episode import EpisodeRecord


def checkpoint_step(name: str | None, run_name: str) -> int | None:
    """This run's step of a checkpoint name: "<run>/base" -> 0, "<run>/step-7" -> 7, else None."""
    if name is None:
        return None
    if name == f"{run_name}/base":
        return 0
    match = re.fullmatch(re.escape(run_name) + r"/step-(\d+)", name)
    return int(match.group(1)) if match else None


def sampled_step(record: EpisodeRecord, run_name: str, launch_step: int, *, sub_calls: bool) -> int:
    """The oldest of this run's steps whose weights sampled a trained call of `record`."""
    steps = []
    for call in record.calls:
        if call.role != "root" and not sub_calls:
            continue
        if call.error is not None or not call.completion_token_ids:
            continue
        step = checkpoint_step(call.checkpoint, run_name)
        steps.append(launch_step if step is None else step)
    return min(steps, default=launch_step)


@dataclass
class LagStats:
    lags: list[int] = field(default_factory=list)
    dropped: int = 0

    def as_metrics(self) -> dict[str, float]:
        out = {"data/stale_dropped": float(self.dropped)}
        if self.lags:
            out["policy/lag_mean"] = sum(self.lags) / len(self.lags)
            out["policy/lag_max"] = float(max(self.lags))
        return out


def drop_stale(
    records: list[EpisodeRecord],
    *,
    learner_step: int,
    max_lag: int,
    run_name: str,
    launch_step: int,
    sub_calls: bool = False,
) -> tuple[list[EpisodeRecord], LagStats]:
    """Keep the records sampled at most `max_lag` steps behind `learner_step` (the step whose
    weights the learner holds: m - 1 when training step m)."""
    kept, stats = [], LagStats()
    for record in records:
        lag = learner_step - sampled_step(record, run_name, launch_step, sub_calls=sub_calls)
        if lag > max_lag:
            stats.dropped += 1
            continue
        stats.lags.append(lag)
        kept.append(record)
    return kept, stats

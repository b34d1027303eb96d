"""From episode records to training samples.

A trainer trains on exactly what was sampled: the root transcript's token ids with its loss
mask (1 on sampled tokens), the sampling logprobs (for importance ratios), and one scalar
advantage per episode. Advantages here are GRPO's group-relative ones without std scaling
(reward minus the group mean, the DR-GRPO choice), with groups keyed by task id.

Which episodes are left out is not decided here: `EpisodeRecord.training_exclusion()` is the
one rule (the environment failed, the episode was never scored or its reward is not finite, or
the rubric masked it), and excluded episodes never enter a group's mean. On top of that an
episode is dropped when its sample cannot be trained on as sampled: no engine token ids (a
scripted or text-only policy), or ids that drifted from what the engine consumed. A sample whose
sampled tokens lack logprobs is kept but says so (`has_logprobs` False): it can be trained on,
but not importance-weighted against its sampling policy.

An episode whose root history was compacted has several root segments
(`EpisodeRecord.root_samples()`): each becomes its own sample (`segment` 0, 1, ...) carrying
the episode's reward and advantage; the group mean is taken over episodes, never over segments,
so compaction does not weigh an episode more in its group. An episode is dropped whole when any
of its segments cannot be trained on as sampled.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from dataclasses import dataclass

from rlm_env.episode.record import EpisodeRecord


@dataclass
class TrainingSample:
    episode_id: str
    group: str
    token_ids: list[int]
    loss_mask: list[int]
    logprobs: list[float | None]
    """Sampling logprob of each token (None where not sampled, or where the engine gave none)."""
    reward: float
    advantage: float = 0.0
    segment: int = 0
    """Which root segment of the episode this is (0 unless its history was compacted)."""

    @property
    def has_logprobs(self) -> bool:
        """Every loss-masked token has its sampling logprob (importance weighting is possible)."""
        return all(lp is not None for lp, m in zip(self.logprobs, self.loss_mask, strict=True) if m)


def group_advantages(rewards: list[float]) -> list[float]:
    """Reward minus the group mean (no division by std)."""
    if not rewards:
        return []
    mean = statistics.fmean(rewards)
    return [r - mean for r in rewards]


def samples_from_records(records: list[EpisodeRecord]) -> tuple[list[TrainingSample], dict[str, int]]:
    """Samples with advantages, and counts of what was dropped and why (keys: the reasons of
    `training_exclusion()`, "no_token_ids", "inconsistent_ids")."""
    dropped: dict[str, int] = defaultdict(int)
    # group -> one list of segment samples per episode
    groups: dict[str, list[list[TrainingSample]]] = defaultdict(list)
    for r in records:
        reason = r.training_exclusion()
        if reason is not None:
            dropped[reason] += 1
            continue
        segments = r.root_samples()
        if any(not s.available or not s.token_ids for s in segments):
            dropped["no_token_ids"] += 1
            continue
        if any(not s.consistent for s in segments):
            dropped["inconsistent_ids"] += 1
            continue
        group = r.task.get("id", r.episode_id)
        groups[group].append(
            [
                TrainingSample(
                    episode_id=r.episode_id,
                    group=group,
                    token_ids=list(sample.token_ids),
                    loss_mask=list(sample.loss_mask),
                    logprobs=list(sample.logprobs),
                    reward=float(r.rewards["reward"]),
                    segment=k,
                )
                for k, sample in enumerate(segments)
            ]
        )
    out: list[TrainingSample] = []
    for episodes in groups.values():
        rewards = [segments[0].reward for segments in episodes]
        for segments, adv in zip(episodes, group_advantages(rewards), strict=True):
            for s in segments:
                s.advantage = adv
                out.append(s)
    return out, dict(dropped)

"""From episode records to what the learner trains on, per mode.

`TrainItem` is one sequence: token ids, the loss mask (1 exactly on tokens the policy sampled;
prompts, REPL output and chat-template tokens are 0), the engine's sampling logprob per token
(None where there is none), and one advantage. Root transcripts come through
`training.samples.samples_from_records` (the lead's conversion, which drops samples without
engine ids or with drifted ids); sub-calls become items of their own under
sub_call_policy="trained".

Exclusion has one source of truth: `EpisodeRecord.training_exclusion()` (None = train on it).
An excluded episode never enters a group's statistics or the loss; it is counted by reason.

GRPO groups are keyed by task id (the G episodes of a group share one task, hence one context).
A group whose included rewards are all equal teaches nothing (every advantage is 0): it is
skipped and counted as `zero_variance_groups`.
"""

from __future__ import annotations

import statistics
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

from rlm_env.episode.record import EpisodeRecord
from training.samples import samples_from_records


@dataclass
class TrainItem:
    episode_id: str
    group: str
    token_ids: list[int]
    loss_mask: list[int]
    logprobs: list[float | None]
    """Sampling logprob per token (None where the engine gave none or the token was not sampled)."""
    reward: float = 0.0
    advantage: float = 1.0
    temperature: float = 1.0
    """The sampling temperature (the engine's logprobs are of the tempered distribution)."""
    kind: str = "root"
    """"root" (the root transcript) or "sub" (one sub-call, under sub_call_policy="trained")."""
    checkpoints: list[str] = field(default_factory=list)
    """Which weights sampled the item's calls (checkpoint names, or "v<weight_version>")."""

    @property
    def has_logprobs(self) -> bool:
        """Every loss token has a sampling logprob, so the sample can be importance-weighted."""
        return all(lp is not None for lp, m in zip(self.logprobs, self.loss_mask, strict=True) if m)

    @property
    def num_loss_tokens(self) -> int:
        return sum(self.loss_mask)


@dataclass
class BatchStats:
    """What happened to the records on their way to the loss."""

    episodes: int = 0
    excluded: Counter = field(default_factory=Counter)
    """Excluded episodes by reason (never in group stats, never in the loss)."""
    dropped: Counter = field(default_factory=Counter)
    """Included episodes without a usable sample (no ids, drifted ids, too long)."""
    groups: int = 0
    zero_variance_groups: int = 0
    items: int = 0
    items_without_logprobs: int = 0
    """Items trained with the on-policy fallback (ratio 1) because a logprob was missing."""

    def as_dict(self) -> dict[str, float]:
        out: dict[str, float] = {
            "episodes": self.episodes,
            "excluded": sum(self.excluded.values()),
            "groups": self.groups,
            "zero_variance_groups": self.zero_variance_groups,
            "items": self.items,
            "items_without_logprobs": self.items_without_logprobs,
        }
        out.update({f"excluded/{k}": v for k, v in self.excluded.items()})
        out.update({f"dropped/{k}": v for k, v in self.dropped.items()})
        return out


def exclusion(record: EpisodeRecord) -> str | None:
    """Why this episode must not be trained on (None: train on it): the record's one rule."""
    return record.training_exclusion()


def group_key(record: EpisodeRecord) -> str:
    return str(record.task.get("id", record.episode_id))


def _checkpoint_of(call) -> str:
    if call.checkpoint:
        return call.checkpoint
    return f"v{call.weight_version}" if call.weight_version is not None else "unknown"


def root_items(
    records: list[EpisodeRecord], max_seq_len: int, stats: BatchStats
) -> dict[str, list[TrainItem]]:
    """The root items of each record with usable root samples (episode id -> items, one per
    root segment: several when its history was compacted); reward filled in."""
    samples, dropped = samples_from_records(records)
    stats.dropped.update(dropped)
    by_id = {r.episode_id: r for r in records}
    items: dict[str, list[TrainItem]] = defaultdict(list)
    for s in samples:
        record = by_id[s.episode_id]
        if len(s.token_ids) > max_seq_len:
            stats.dropped["too_long"] += 1
            continue
        logprobs: list[float | None] = [
            lp if m else None for lp, m in zip(s.logprobs, s.loss_mask, strict=True)
        ]
        items[s.episode_id].append(
            TrainItem(
                episode_id=s.episode_id if s.segment == 0 else f"{s.episode_id}:segment-{s.segment}",
                group=group_key(record),
                token_ids=list(s.token_ids),
                loss_mask=list(s.loss_mask),
                logprobs=logprobs,
                reward=float(record.rewards.get("reward", 0.0)),
                checkpoints=sorted(
                    {
                        _checkpoint_of(c)
                        for c in record.calls
                        if c.role not in ("sub", "summary") and c.segment == s.segment
                    }
                ),
            )
        )
    return dict(items)


def sub_call_items(record: EpisodeRecord, advantage: float, max_seq_len: int) -> list[TrainItem]:
    """Each sub-call with engine ids as its own sample (prompt masked out), carrying `advantage`."""
    out = []
    for c in record.calls:
        prompt = record.call_prompt_ids(c) if c.role == "sub" else None
        if not prompt or not c.completion_token_ids or c.error:
            continue
        ids = prompt + list(c.completion_token_ids)
        if len(ids) > max_seq_len:
            continue
        n_prompt = len(prompt)
        lps: list[float | None] = [None] * n_prompt + (
            list(c.logprobs) if c.logprobs is not None else [None] * len(c.completion_token_ids)
        )
        out.append(
            TrainItem(
                episode_id=f"{record.episode_id}:{c.id}",
                group=group_key(record),
                token_ids=ids,
                loss_mask=[0] * n_prompt + [1] * len(c.completion_token_ids),
                logprobs=lps,
                reward=float(record.rewards.get("reward", 0.0)),
                advantage=advantage,
                kind="sub",
                checkpoints=[_checkpoint_of(c)],
            )
        )
    return out


def grpo_items(
    records: list[EpisodeRecord],
    *,
    std_normalize: bool = False,
    max_seq_len: int = 1 << 30,
    train_sub_calls: bool = False,
    eps: float = 1e-6,
) -> tuple[list[TrainItem], BatchStats]:
    """GRPO samples: advantage = reward - mean of the group's included rewards (optionally over
    their std); excluded episodes dropped before any statistic; zero-variance groups skipped."""
    stats = BatchStats(episodes=len(records))
    groups: dict[str, list[EpisodeRecord]] = defaultdict(list)
    for r in records:
        reason = exclusion(r)
        if reason is not None:
            stats.excluded[reason] += 1
            continue
        groups[group_key(r)].append(r)
    included = [r for members in groups.values() for r in members]
    roots = root_items(included, max_seq_len, stats)
    out: list[TrainItem] = []
    for members in groups.values():
        stats.groups += 1
        rewards = [float(r.rewards.get("reward", 0.0)) for r in members]
        if len(members) < 2 or max(rewards) - min(rewards) <= eps:
            stats.zero_variance_groups += 1
            continue
        mean = statistics.fmean(rewards)
        std = statistics.pstdev(rewards)
        for r, reward in zip(members, rewards, strict=True):
            advantage = reward - mean
            if std_normalize:
                advantage /= std + eps
            for item in roots.get(r.episode_id, []):
                item.advantage = advantage
                out.append(item)
            if train_sub_calls:
                out.extend(sub_call_items(r, advantage, max_seq_len))
    stats.items = len(out)
    stats.items_without_logprobs = sum(1 for i in out if not i.has_logprobs)
    return out, stats


def sft_items(
    records: list[EpisodeRecord], *, max_seq_len: int = 1 << 30, only_correct: bool = False
) -> tuple[list[TrainItem], BatchStats]:
    """SFT samples (advantage 1) from included records, optionally only correct ones."""
    stats = BatchStats(episodes=len(records))
    kept = []
    for r in records:
        reason = exclusion(r)
        if reason is None and only_correct and r.rewards.get("correctness", 0.0) < 1.0:
            reason = "not_correct"
        if reason is not None:
            stats.excluded[reason] += 1
            continue
        kept.append(r)
    items = [item for per_episode in root_items(kept, max_seq_len, stats).values() for item in per_episode]
    stats.items = len(items)
    return items, stats


def rft_filter(
    records: Iterable[EpisodeRecord],
    *,
    reward_threshold: float,
    require_confirmed: bool = True,
    dedup_by_code: bool = True,
) -> tuple[list[EpisodeRecord], Counter]:
    """The episodes a rejection-sampling round keeps, and why the others were rejected."""
    kept: list[EpisodeRecord] = []
    rejected: Counter = Counter()
    seen: set[tuple[str, tuple[str, ...]]] = set()
    for r in records:
        reason = exclusion(r)
        if reason is not None:
            rejected[f"excluded/{reason}"] += 1
        elif float(r.rewards.get("reward", 0.0)) < reward_threshold:
            rejected["below_threshold"] += 1
        elif require_confirmed and r.answer.status != "confirmed":
            rejected["not_confirmed"] += 1
        else:
            key = (group_key(r), tuple(c.code.strip() for c in r.cells))
            if dedup_by_code and key in seen:
                rejected["duplicate_code"] += 1
                continue
            seen.add(key)
            kept.append(r)
    return kept, rejected

"""One step of each mode, given a `Trainer` (training/run.py) that holds the learner and engines.

- `grpo_step`: the step's rollouts (already running when `max_policy_lag > 0`), stale episodes
  dropped, group advantages, `inner_steps` optimizer steps, then the engines reloaded;
- `rft_step`: the round's rollouts, the filter, `epochs_per_round` passes of SFT, the reload;
- `sft_step`: one optimizer step on the step's seeded batch of the data pool.

The learner runs on the trainer's own learner thread (training/learner_thread.py), so rollouts
launched ahead keep running on the event loop while it computes (torch releases the GIL in its
kernels). A step with
no trainable sample takes no optimizer step: its row says `learner/skipped = 1` and has no loss.
Each returns (metrics, ids of the episodes it trained on).
"""

from __future__ import annotations

from typing import Any

from training.data import TrainItem, grpo_items, rft_filter, sft_items
from training.run_folder import episode_metrics, maybe_kill


async def learn(trainer: Any, batches: list[list[TrainItem]], objective: str) -> dict[str, float]:
    """Optimizer steps on each batch in turn (in a thread); the last step's learner metrics."""
    metrics: dict[str, float] = {}
    learner_s = 0.0
    for batch in batches:
        m = await trainer.learner_thread.run(trainer.learner.train_step, batch, objective)
        learner_s += m["learner_s"]
    if batches:
        metrics.update({f"learner/{k}": v for k, v in m.items()})
    else:
        metrics["learner/skipped"] = 1.0
    metrics["time/learner_s"] = learner_s
    return metrics


async def grpo_step(trainer: Any, step: int) -> tuple[dict[str, float], list[str]]:
    config = trainer.config
    g = config.grpo
    records, times = await trainer.rollout(step)
    trained_sub_calls = config.sub_call_policy == "trained"
    fresh, lag = trainer.drop_stale(records, step)
    items, stats = grpo_items(
        fresh,
        std_normalize=g.std_normalize,
        max_seq_len=config.max_seq_len,
        train_sub_calls=trained_sub_calls,
    )
    temperature = config.episode.root_sampling.temperature
    sub_temperature = config.episode.sub_sampling.temperature
    for item in items:
        item.temperature = temperature if item.kind == "root" else sub_temperature
    metrics: dict[str, float] = {**times, **episode_metrics(records), **lag.as_metrics()}
    metrics.update({f"data/{k}": v for k, v in stats.as_dict().items()})
    metrics.update(await learn(trainer, [items] * g.inner_steps if items else [], "grpo"))
    maybe_kill(step, "after_update")
    metrics.update(await trainer.sync(step))
    return metrics, [i.episode_id for i in items]


async def rft_step(trainer: Any, step: int) -> tuple[dict[str, float], list[str]]:
    config = trainer.config
    r = config.rft
    records, times = await trainer.rollout(step)
    fresh, lag = trainer.drop_stale(records, step)
    kept, rejected = rft_filter(
        fresh,
        reward_threshold=r.reward_threshold,
        require_confirmed=r.require_confirmed,
        dedup_by_code=r.dedup_by_code,
    )
    items, _ = sft_items(kept, max_seq_len=config.max_seq_len)
    metrics: dict[str, float] = {**times, **episode_metrics(records), **lag.as_metrics()}
    metrics["data/kept"] = len(kept)
    metrics.update({f"data/rejected/{k}": v for k, v in rejected.items()})
    size = config.batch_size
    batches = [items[k : k + size] for _ in range(r.epochs_per_round) for k in range(0, len(items), size)]
    metrics.update(await learn(trainer, batches, "sft"))
    maybe_kill(step, "after_update")
    metrics.update(await trainer.sync(step))
    return metrics, [i.episode_id for i in items]


async def sft_step(trainer: Any, step: int, pool: list[TrainItem]) -> tuple[dict[str, float], list[str]]:
    from training.distributed import sft_batch

    config = trainer.config
    batch = sft_batch(pool, step, config.batch_size, config.seed)
    metrics = await learn(trainer, [batch], "sft")
    maybe_kill(step, "after_update")
    return metrics, [i.episode_id for i in batch]

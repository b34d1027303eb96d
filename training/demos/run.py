"""`rlm-env demos`: run the scripted experts through the real episode loop and keep their records.

Tasks come from the family's generator (the train split by default); each episode's strategy
is drawn from a hash of its id, so the same command writes the same demonstrations. Episodes
run exactly as `rlm-env eval` runs them (`evaluate.run_eval`: real sandboxes from a warm pool,
the rubric, `trajectories.jsonl` written as they finish, resumable), with the expert as the
root policy and, for the sub-calls some experts make, `--sub-model` (default "echo": the niah
expert makes none). `summary.json` holds the per-length rows, the overall `accuracy`, the
success rate per strategy, and how many records `training.samples.samples_from_records` keeps
(all of them, unless an expert failed: then the run says so).

What it does not do: it does not filter. A failed demonstration stays in the file with its
reward, like any episode; a trainer that wants only successes selects them by reward.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from rlm_env.episode import EpisodeRecord
from rlm_env.evaluate import (
    EvalConfig,
    build_tasks,
    console,
    episode_id_for,
    print_summary,
    run_eval,
    summarize,
)
from rlm_env.tasks.base import Task
from training.demos import EXPERTS
from training.demos.policy import POLICY_PREFIX, ExpertPolicy

DATA_SOURCE = "scripted-demonstration"


def pick_strategy(family: str, episode_id: str, strategy: str | None = None) -> str:
    """The strategy an episode follows: `strategy` if given, else drawn from the episode id."""
    import random

    module = EXPERTS[family]
    if strategy is not None:
        if strategy not in module.STRATEGIES:
            raise SystemExit(f"unknown {family} strategy {strategy!r}; known: {', '.join(module.STRATEGIES)}")
        return strategy
    return random.Random(f"rlm-env/demos/{family}/strategy/{episode_id}").choice(module.STRATEGIES)


def label_tasks(family: str, tasks: list[Task], strategy: str | None = None) -> dict[str, str]:
    """Mark tasks as demonstrations (metadata `data_source`, `demo_policy`); episode id -> strategy."""
    chosen = {}
    for task in tasks:
        episode_id = episode_id_for(task)
        chosen[episode_id] = pick_strategy(family, episode_id, strategy)
        task.metadata["data_source"] = DATA_SOURCE
        task.metadata["demo_policy"] = f"{POLICY_PREFIX}/{chosen[episode_id]}"
    return chosen


def expert_policy(
    family: str, chosen: dict[str, str], tokenizer: Any | None = None, style: str = "varied"
) -> ExpertPolicy:
    """The root policy that plays `family`'s expert with the strategies in `chosen`; `style`
    "fixed" keeps the expert's variable names the same in every episode (niah only)."""
    if family not in EXPERTS:
        raise SystemExit(f"no expert for task family {family!r}; experts: {', '.join(sorted(EXPERTS))}")
    if tokenizer is None:
        from transformers import AutoTokenizer

        from rlm_env.models.default_model import ensure_default_model

        tokenizer = AutoTokenizer.from_pretrained(str(ensure_default_model()))
    module = EXPERTS[family]

    def scripts(episode_id: str, question: str):
        if style != "varied":  # only experts with a fixed style take the argument
            return module.script(episode_id, question, chosen.get(episode_id), style=style)
        return module.script(episode_id, question, chosen.get(episode_id))

    return ExpertPolicy(tokenizer, scripts, family)


def demo_summary(records: list[EpisodeRecord]) -> dict[str, Any]:
    """Accuracy overall and per strategy, and what a trainer can use."""
    from training.samples import samples_from_records

    by_strategy: dict[str, list[float]] = defaultdict(list)
    for r in records:
        by_strategy[r.task.get("metadata", {}).get("demo_policy", "?")].append(
            r.rewards.get("correctness", 0.0)
        )
    samples, dropped = samples_from_records(records)
    return {
        "data_source": DATA_SOURCE,
        "episodes": len(records),
        "accuracy": round(statistics.fmean(r.rewards.get("correctness", 0.0) for r in records), 4)
        if records
        else 0.0,
        "by_strategy": {
            name: {"episodes": len(v), "accuracy": round(statistics.fmean(v), 4)}
            for name, v in sorted(by_strategy.items())
        },
        "trainable_samples": len(samples),
        "trainable_tokens": sum(sum(s.loss_mask) for s in samples),
        "dropped": dropped,
    }


def main(args: Any) -> int:
    from rewards import Rubric, RubricConfig
    from rlm_env.episode.config import config_from_dict, load_config
    from rlm_env.models import build_model

    family = args.task or "niah"
    lengths = [x.strip() for x in (args.lengths or "8k").split(",") if x.strip()]
    config = EvalConfig(
        task=family,
        lengths=lengths,
        episodes=args.episodes or 20,
        split=args.split or "train",
        seed=args.seed or 0,
        model=f"{POLICY_PREFIX}/{family}",
        sub_model=args.sub_model or "echo",
        concurrency=args.concurrency or 2,
        out=args.out or f"runs/demos-{family}",
    )
    overrides = dict(args.set or [])
    episode_config = load_config(args.config, overrides) if args.config else config_from_dict({}, overrides)
    tasks = build_tasks(config)
    chosen = label_tasks(family, tasks, args.strategy)
    policy = expert_policy(family, chosen, style=args.style or "varied")
    started = time.monotonic()

    async def _run() -> list[EpisodeRecord]:
        sub = build_model(config.sub_model, role="sub")
        try:
            return await run_eval(config, episode_config, tasks, policy, sub, Rubric(RubricConfig()))
        finally:
            await sub.close()

    records = asyncio.run(_run())
    summary = {
        **demo_summary(records),
        "config": config.model_dump(),
        "rows": summarize(records),
        "wall_time_s": round(time.monotonic() - started, 2),
    }
    out = Path(config.out)
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    print_summary(summary["rows"], f"{family} demonstrations ({config.split} split, {len(records)} episodes)")
    console.print(
        f"expert accuracy {summary['accuracy']:.3f}; trainable samples {summary['trainable_samples']} "
        f"({summary['trainable_tokens']:,} sampled tokens); dropped {summary['dropped'] or 'none'}\n"
        f"trajectories: {out / 'trajectories.jsonl'}\nsummary: {out / 'summary.json'}"
    )
    return 0

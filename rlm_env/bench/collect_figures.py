"""Figure 9: collection throughput and dataset size per episode (`rlm-env collect`).

Two roots, the same machinery (`collect.run.collect_worker`: bounded concurrency, warm sandbox
pool, one fsync'd JSON line per episode, Parquet shards at the end):

- a scripted root (`InstantModel` replying one fixed ```repl cell that prints the context's
  size and a slice, makes one `llm_query` on an instant sub-model and answers): the ceiling the
  environment itself allows, with no model time;
- the default model as root and sub-model on vLLM (the demo's episode settings, 4 turns at
  most): what a real collection run gets on this machine.

Throughput is episodes over the wall time of the whole worker (Parquet included), scaled to an
hour; sizes are the JSONL and Parquet bytes divided by the episodes.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

from rlm_env.bench.report import Figure, Row

SCRIPTED_REPLY = (
    "```repl\nprint(len(context))\nprint(context[:200])\n"
    "s = llm_query('Summarize: ' + context[:500])\nFINAL(s)\n```"
)
ENGINE_EPISODE = {
    "budget": {"max_root_turns": 4},
    "root_sampling": {"max_tokens": 256},
    "code_fence_languages": ["repl", "python"],
}


async def _measure(root: Any, sub: Any, episodes: int, length: str, episode: dict) -> dict[str, Any]:
    from rewards import Rubric, RubricConfig
    from rlm_env.collect.run import CollectConfig, collect_worker, worker_dir
    from rlm_env.episode.config import config_from_dict

    with tempfile.TemporaryDirectory(prefix="rlm-collect-bench-") as tmp:
        cfg = CollectConfig(task="niah", lengths=[length], episodes=episodes, concurrency=4, out=tmp)
        started = time.perf_counter()
        records = await collect_worker(cfg, config_from_dict(episode), root, sub, Rubric(RubricConfig()))
        seconds = time.perf_counter() - started
        jsonl = (worker_dir(tmp, cfg.worker) / "trajectories.jsonl").stat().st_size
        parquet = sum(p.stat().st_size for p in (Path(tmp) / "data").glob("*.parquet"))
    n = len(records)
    return {
        "episodes": n,
        "seconds": round(seconds, 2),
        "episodes_per_hour": round(n / seconds * 3600),
        "jsonl_bytes_per_episode": round(jsonl / n),
        "parquet_bytes_per_episode": round(parquet / n),
        "mean_root_turns": round(sum(r.budget.get("root_turns", 0) for r in records) / n, 2),
        "infra_failures": sum(r.flags.infra_failure for r in records),
    }


def _text(m: dict[str, Any]) -> str:
    return (
        f"{m['episodes_per_hour']:,} episodes/h ({m['episodes']} in {m['seconds']} s); "
        f"{m['jsonl_bytes_per_episode'] / 1024:.1f} KiB JSONL + {m['parquet_bytes_per_episode'] / 1024:.1f} KiB "
        "Parquet per episode"
    )


async def collect(client: Any | None, scripted_episodes: int, engine_episodes: int) -> Figure:
    from rlm_env.models.echo import InstantModel

    title = "9. Collection throughput"
    scripted = await _measure(
        InstantModel(SCRIPTED_REPLY, "scripted-root"), InstantModel(), scripted_episodes, "8k", {}
    )
    rows = [Row(f"{title}: scripted root, instant sub-model, niah 8k, concurrency 4", _text(scripted))]
    raw: dict[str, Any] = {"scripted_root": scripted}
    if client is not None:
        real = await _measure(client, client, engine_episodes, "8k", ENGINE_EPISODE)
        rows.append(
            Row(f"{title}: default model as root and sub-model (vLLM), niah 8k, concurrency 4", _text(real))
        )
        raw["default_model"] = real
    return Figure(
        "collect",
        rows,
        raw,
        "`collect.run.collect_worker` on S-NIAH 8k train tasks, 4 episodes in flight, from the first "
        "episode to the Parquet shards written; sizes are the worker's trajectories.jsonl and its "
        "Parquet shards over the episodes (contexts by reference, never inlined). The default model "
        f"runs with {ENGINE_EPISODE} (one engine shared by root and sub-calls).",
    )

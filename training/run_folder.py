"""The run folder of `rlm-env train`, the per-step episode metrics, and the reward-curve plot.

`Run` owns the folder (see `training/run.py`'s docstring for its layout and the resume rule):
it writes the resolved config (refusing to resume under a different one), finds the last
finished step (a checkpoint folder with its `meta.json`, renamed into place atomically),
prunes old checkpoints, and appends log rows with an fsync, so a kill loses no logged row.
Nothing here knows about models or engines.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
from pathlib import Path
from typing import Any

from rlm_env.episode import EpisodeRecord
from training.config import TrainConfig

FREE_FIELDS = (
    "steps",
    "out",
    "workers",
    "ray_address",
    "sync_dir",
    "placement_strategy",
    "learner_cpus",
    "gradient_checkpointing",
)
"""Fields a resumed run may change: where and how long it runs, not what it trains."""
KILL_ENV = "RLM_TRAIN_KILL_AT"
"""Test hook: "<step>:<point>" SIGKILLs this process at that point (after_update, after_checkpoint)."""


class Run:
    """The run folder (see the module docstring)."""

    def __init__(self, config: TrainConfig):
        self.config = config
        self.dir = Path(config.out)
        self.ckpt_dir = self.dir / "checkpoints"
        self.records_dir = self.dir / "records"

    def prepare(self) -> None:
        self.ckpt_dir.mkdir(parents=True, exist_ok=True)
        self.records_dir.mkdir(parents=True, exist_ok=True)
        resolved = self.config.model_dump(mode="json")
        path = self.dir / "config.json"
        if path.exists() and self.last_step() > 0:
            old = json.loads(path.read_text())
            try:  # fields added since the run started take their defaults, not "changed"
                old = TrainConfig.model_validate(old).model_dump(mode="json")
            except ValueError:
                pass
            keys = set(old) | set(resolved)
            free = FREE_FIELDS
            changed = sorted(k for k in keys if k not in free and old.get(k) != resolved.get(k))
            if changed:
                raise SystemExit(f"{path}: cannot resume with a different config (changed: {changed})")
        path.write_text(json.dumps(resolved, indent=2))

    def checkpoint_path(self, step: int) -> Path:
        return self.ckpt_dir / f"step-{step:04d}"

    def last_step(self) -> int:
        steps = [int(p.name.split("-")[1]) for p in self.ckpt_dir.glob("step-[0-9]*") if p.is_dir()]
        steps = [s for s in steps if (self.checkpoint_path(s) / "meta.json").exists()]
        return max(steps, default=0)

    def prune(self) -> None:
        steps = sorted(int(p.name.split("-")[1]) for p in self.ckpt_dir.glob("step-[0-9]*") if p.is_dir())
        for s in steps[: -self.config.keep_checkpoints]:
            shutil.rmtree(self.checkpoint_path(s), ignore_errors=True)

    def append(self, name: str, row: dict[str, Any]) -> None:
        with open(self.dir / name, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def metrics(self) -> list[dict[str, Any]]:
        path = self.dir / "metrics.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def checkpoint_name(self, step: int) -> str:
        return f"{self.config.name}/step-{step}" if step else f"{self.config.name}/base"


def maybe_kill(step: int, point: str) -> None:
    if os.environ.get(KILL_ENV) == f"{step}:{point}":
        os.kill(os.getpid(), signal.SIGKILL)


def episode_metrics(records: list[EpisodeRecord]) -> dict[str, float]:
    """Means over a step's episodes: reward and each rubric component, accuracy, turns, cells,
    sub-calls, tokens, and the share excluded from training."""
    if not records:
        return {}
    n = len(records)
    out: dict[str, float] = {}
    keys = sorted({k for r in records for k in r.rewards})
    for k in keys:
        out[f"reward/{k}"] = sum(float(r.rewards.get(k, 0.0)) for r in records) / n
    out["episode/accuracy"] = sum(float(r.rewards.get("correctness", 0.0)) for r in records) / n
    out["episode/answered"] = sum(1.0 for r in records if r.answer.status != "none") / n
    out["episode/turns"] = sum(r.budget.get("root_turns", 0) for r in records) / n
    out["episode/cells"] = sum(len(r.cells) for r in records) / n
    out["episode/sub_calls"] = sum(r.budget.get("sub_calls", 0) for r in records) / n
    out["episode/root_tokens"] = (
        sum(
            r.budget.get("root_prompt_tokens", 0) + r.budget.get("root_completion_tokens", 0) for r in records
        )
        / n
    )
    out["episode/sampled_tokens"] = sum(sum(s.loss_mask) for r in records for s in r.root_samples()) / n
    out["episode/wall_s"] = sum(r.wall_time_s for r in records) / n
    return out


def plot_curves(rows: list[dict[str, Any]], path: Path, mode: str) -> Path | None:
    """Reward (rft/grpo) or loss (sft) per step, as a PNG."""
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r["step"] for r in rows]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    if any("reward/reward" in r for r in rows):
        ax.plot(steps, [r.get("reward/reward", float("nan")) for r in rows], marker="o", label="reward")
        ax.plot(steps, [r.get("episode/accuracy", float("nan")) for r in rows], marker=".", label="accuracy")
        ax.set_ylabel("mean over the step's episodes")
    else:
        ax.plot(steps, [r.get("learner/loss", float("nan")) for r in rows], marker="o", label="loss")
        ax.set_ylabel("loss")
    ax.set_xlabel("step")
    ax.set_title(f"rlm-env train ({mode})")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path

"""`rlm-env train`: one loop, three modes (sft, rft, grpo), in a resumable run folder.

Read top to bottom: `Run` owns the folder; `train()` builds the learner (and, for rft/grpo, the
vLLM engines and the rollout machinery), resumes from the last checkpoint, then runs steps:

- sft: a step is one optimizer step on `batch_size` items drawn, in a seeded order, from the
  records (`sft.data` files and/or scripted demonstrations generated through the episode loop);
- rft: a round samples K episodes per task with the current policy, keeps those that pass the
  filter, fine-tunes on them (`epochs_per_round` passes, `batch_size` a step), syncs the engines;
- grpo: a step samples G episodes for each of `tasks_per_step` tasks, computes group advantages
  (excluded episodes left out), takes `inner_steps` optimizer steps, syncs the engines.

The run folder: `config.json` (resolved), `checkpoints/step-NNNN/` (trainable weights, optimizer,
metrics; the last `keep_checkpoints`), `records/step-NNNN.jsonl` (every episode sampled in that
step, scored), `trained_on.jsonl` (which episode ids each step trained on), `metrics.jsonl`,
`checkpoints.json` (engine weight_version -> checkpoint name), `tb/` (TensorBoard) and
`reward_curve.png`.

Resume: step n is finished when `checkpoints/step-n` exists (written atomically after the
update). A killed run restarts at step n+1 with the learner and the engines on step n's weights;
rollouts of the unfinished step already in its records file were sampled by those same weights
and are reused, so no finished step is repeated and no sampled episode is thrown away.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from rlm_env.episode import EpisodeRecord, read_records
from training.config import TrainConfig, load_train_config
from training.data import BatchStats, TrainItem, grpo_items, rft_filter, sft_items

console = Console(stderr=True)
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
            keys = set(old) | set(resolved)
            free = ("steps", "out", "workers", "ray_address", "sync_dir")  # where/how long, not what
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


def _maybe_kill(step: int, point: str) -> None:
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


class Trainer:
    """Holds the learner, the engines and the run folder for one `train()` call."""

    def __init__(
        self, config: TrainConfig, model_path: str, *, root_model: Any = None, sub_model: Any = None
    ):
        """`root_model`/`sub_model`: already started engines to use (and leave open), e.g. one
        engine shared by several runs in a test; None starts (and later closes) our own."""
        self.config = config
        self.model_path = model_path
        self.run = Run(config)
        self.learner: Any = None
        self.root_model: Any = root_model
        self.sub_model: Any = sub_model if sub_model is not None else root_model
        self._owned: list[Any] = []
        self.rollouts: Any = None
        self.rubric: Any = None
        self.tb: Any = None
        self.version_names: dict[str, str] = {}

    # ---- setup ----------------------------------------------------------------------------
    def _start_engines(self) -> None:
        from rlm_env.models import EngineConfig, build_model
        from training.rollout import Rollouts

        engine = EngineConfig(**self.config.rollout.engine)
        if self.root_model is None:
            console.print(f"starting the vLLM engine for {self.model_path} (~30-60 s on CPU)")
            self.root_model = build_model(self.model_path, role="root", config=engine)
            self._owned.append(self.root_model)
            if self.config.sub_call_policy == "frozen":
                frozen = engine.model_copy(update={"share_engine": False})
                self.sub_model = build_model(self.model_path, role="sub", config=frozen)
                self._owned.append(self.sub_model)
            else:
                self.sub_model = self.root_model
        self.rollouts = Rollouts(
            self.config.resolved_episode(),
            self.root_model,
            self.sub_model,
            concurrency=self.config.rollout.concurrency,
        )

    def _sync_path(self) -> Path:
        return Path(self.config.sync_dir) / self.config.name.replace("/", "_")

    async def _sync(self, step: int) -> dict[str, float]:
        from training.sync import sync_weights

        name = self.run.checkpoint_name(step)
        result = await sync_weights(self.learner, self.root_model, self._sync_path(), name)
        if result.weight_version is not None:
            self.version_names[f"v{result.weight_version}"] = name
            (self.run.dir / "checkpoints.json").write_text(json.dumps(self.version_names, indent=2))
        return {
            "time/sync_s": result.total_s,
            "time/sync_export_s": result.export_s,
            "time/sync_reload_s": result.reload_s,
        }

    # ---- data -----------------------------------------------------------------------------
    async def _demos(self, tokenizer: Any = None) -> list[EpisodeRecord]:
        """`sft.demos` scripted expert demonstrations (`training.demos`) on the rollout tasks,
        through the real episode loop and sandbox, scored; written to records/demos.jsonl."""
        from rewards import Rubric, RubricConfig
        from training.demos import EXPERTS
        from training.demos.run import expert_policy, label_tasks
        from training.rollout import Rollouts, group_jobs, score, step_tasks, write_records

        rc = self.config.rollout
        if rc.task not in EXPERTS:
            raise SystemExit(
                f"sft.demos: no scripted expert for task family {rc.task!r} (have {sorted(EXPERTS)})"
            )
        tasks = []
        step = 1
        while len(tasks) < self.config.sft.demos:
            tasks.extend(step_tasks(rc, step))
            step += 1
        jobs = group_jobs(tasks[: self.config.sft.demos], 1, 0)
        label_tasks(rc.task, [j.task for j in jobs])
        policy = expert_policy(rc.task, {}, tokenizer or self.learner.tokenizer)
        path = self.run.records_dir / "demos.jsonl"
        rollouts = Rollouts(self.config.resolved_episode(), policy, policy, concurrency=rc.concurrency)
        try:
            records = await rollouts.run(jobs, path)
        finally:
            await rollouts.close()
        await score(records, jobs, Rubric(RubricConfig(**self.config.rubric)), None)
        write_records(path, records)
        return records

    async def _sft_pool(self) -> tuple[list[TrainItem], BatchStats]:
        records: list[EpisodeRecord] = []
        for path in self.config.sft.data:
            records.extend(read_records(path))
        if self.config.sft.demos:
            records.extend(await self._demos())
        items, stats = sft_items(
            records, max_seq_len=self.config.max_seq_len, only_correct=self.config.sft.only_correct
        )
        if not items:
            raise SystemExit(f"sft: no usable samples in the data ({stats.as_dict()})")
        return items, stats

    async def _rollout(self, step: int, copies: int) -> tuple[list[EpisodeRecord], dict[str, float]]:
        from training.rollout import group_jobs, score, step_tasks, write_records

        jobs = group_jobs(step_tasks(self.config.rollout, step), copies, step)
        path = self.run.records_dir / f"step-{step:04d}.jsonl"
        started = time.perf_counter()
        records = await self.rollouts.run(jobs, path)
        rollout_s = time.perf_counter() - started
        scoring_s = await score(records, jobs, self.rubric, self.sub_model)
        write_records(path, records)
        return records, {"time/rollout_s": rollout_s, "time/scoring_s": scoring_s}

    # ---- steps ----------------------------------------------------------------------------
    async def _grpo_step(self, step: int) -> tuple[dict[str, float], list[str]]:
        g = self.config.grpo
        records, times = await self._rollout(step, g.group_size)
        items, stats = grpo_items(
            records,
            std_normalize=g.std_normalize,
            max_seq_len=self.config.max_seq_len,
            train_sub_calls=self.config.sub_call_policy == "trained",
        )
        temperature = self.config.episode.root_sampling.temperature
        sub_temperature = self.config.episode.sub_sampling.temperature
        for item in items:
            item.temperature = temperature if item.kind == "root" else sub_temperature
        metrics: dict[str, float] = {**times, **episode_metrics(records)}
        metrics.update({f"data/{k}": v for k, v in stats.as_dict().items()})
        learner_s = 0.0
        if items:
            for _ in range(g.inner_steps):
                m = self.learner.train_step(items, "grpo")
                learner_s += m["learner_s"]
            metrics.update({f"learner/{k}": v for k, v in m.items()})
        metrics["time/learner_s"] = learner_s
        _maybe_kill(step, "after_update")
        metrics.update(await self._sync(step))
        return metrics, [i.episode_id for i in items]

    async def _rft_step(self, step: int) -> tuple[dict[str, float], list[str]]:
        r = self.config.rft
        records, times = await self._rollout(step, r.samples_per_task)
        kept, rejected = rft_filter(
            records,
            reward_threshold=r.reward_threshold,
            require_confirmed=r.require_confirmed,
            dedup_by_code=r.dedup_by_code,
        )
        items, stats = sft_items(kept, max_seq_len=self.config.max_seq_len)
        metrics: dict[str, float] = {**times, **episode_metrics(records)}
        metrics["data/kept"] = len(kept)
        metrics.update({f"data/rejected/{k}": v for k, v in rejected.items()})
        learner_s = 0.0
        if items:
            size = self.config.batch_size
            for _ in range(r.epochs_per_round):
                for k in range(0, len(items), size):
                    m = self.learner.train_step(items[k : k + size], "sft")
                    learner_s += m["learner_s"]
            metrics.update({f"learner/{k}": v for k, v in m.items()})
        metrics["time/learner_s"] = learner_s
        _maybe_kill(step, "after_update")
        metrics.update(await self._sync(step))
        return metrics, [i.episode_id for i in items]

    def _sft_step(self, step: int, pool: list[TrainItem]) -> tuple[dict[str, float], list[str]]:
        from training.distributed import sft_batch

        batch = sft_batch(pool, step, self.config.batch_size, self.config.seed)
        m = self.learner.train_step(batch, "sft")
        _maybe_kill(step, "after_update")
        return {f"learner/{k}": v for k, v in m.items()} | {"time/learner_s": m["learner_s"]}, [
            i.episode_id for i in batch
        ]

    # ---- the loop -------------------------------------------------------------------------
    async def train(self) -> list[dict[str, Any]]:
        from torch.utils.tensorboard import SummaryWriter

        from rewards import Rubric, RubricConfig
        from training.learner import Learner

        config = self.config
        self.run.prepare()
        self.learner = Learner.from_config(self.model_path, config)
        self.rubric = Rubric(RubricConfig(**config.rubric))
        done = self.run.last_step()
        self.tb = SummaryWriter(str(self.run.dir / "tb"), purge_step=done + 1)
        if done:
            meta = self.learner.load_checkpoint(self.run.checkpoint_path(done))
            self._restore_metrics(meta)
            console.print(f"resuming {self.run.dir} after step {done}")
        names = self.run.dir / "checkpoints.json"
        self.version_names = json.loads(names.read_text()) if names.exists() else {}
        pool: list[TrainItem] = []
        try:
            if config.mode == "sft":
                pool, stats = await self._sft_pool()
                console.print(f"sft: {len(pool)} samples ({stats.as_dict()})")
            else:
                self._start_engines()
                # The engines serve exactly the learner's policy before the first rollout: the
                # resumed step's weights, or the base weights under this run's name ("<run>/base").
                await self._sync(done)
            columns = (
                TextColumn(f"[bold]{config.mode}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                TextColumn("{task.description}"),
            )
            with Progress(*columns, console=console) as progress:
                bar = progress.add_task("", total=config.steps, completed=done)
                for step in range(done + 1, config.steps + 1):
                    started = time.perf_counter()
                    if config.mode == "sft":
                        metrics, trained = self._sft_step(step, pool)
                    elif config.mode == "rft":
                        metrics, trained = await self._rft_step(step)
                    else:
                        metrics, trained = await self._grpo_step(step)
                    metrics["time/step_s"] = time.perf_counter() - started
                    row = {"step": step, "checkpoint": self.run.checkpoint_name(step), **metrics}
                    self.learner.save_checkpoint(
                        self.run.checkpoint_path(step), {"step": step, "metrics": row, "trained": trained}
                    )
                    _maybe_kill(step, "after_checkpoint")
                    self._log(row, trained)
                    self.run.prune()
                    reward = metrics.get("reward/reward")
                    desc = f"loss {metrics.get('learner/loss', float('nan')):.3f}"
                    if reward is not None:
                        desc += f"  reward {reward:.3f}"
                    progress.update(bar, advance=1, description=desc)
        finally:
            if self.tb is not None:
                self.tb.close()
            if self.rollouts is not None:
                await self.rollouts.close()
            for client in self._owned:
                await client.close()
            if self._owned:  # our engines are gone: free the RAM disk (a resumed run rewrites it)
                shutil.rmtree(self._sync_path(), ignore_errors=True)
        if self.run.last_step() == config.steps:
            self.learner.save_adapter(self.run.dir / "adapter")
        rows = self.run.metrics()
        plot_curves(rows, self.run.dir / "reward_curve.png", config.mode)
        return rows

    def _log(self, row: dict[str, Any], trained: list[str]) -> None:
        self.run.append("metrics.jsonl", row)
        self.run.append("trained_on.jsonl", {"step": row["step"], "episode_ids": trained})
        for key, value in row.items():
            if isinstance(value, int | float) and key != "step":
                self.tb.add_scalar(key, value, row["step"])
        self.tb.flush()

    def _restore_metrics(self, meta: dict[str, Any]) -> None:
        """A kill between the checkpoint and the logs loses no row: log it now."""
        row = meta.get("metrics")
        rows = self.run.metrics()
        if row and (not rows or rows[-1]["step"] < row["step"]):
            self._log(row, meta.get("trained", []))


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


def train(config: TrainConfig) -> list[dict[str, Any]]:
    """Run (or resume) training; returns the metric rows. Workers > 1: see `distributed.py`."""
    from rlm_env.models import resolve_model

    if config.ray_address:
        import ray

        ray.init(address=config.ray_address, ignore_reinit_error=True, log_to_driver=False)
    model_path = resolve_model(config.model)
    if config.workers > 1:
        from training.distributed import train_distributed

        return train_distributed(config, model_path)
    return asyncio.run(Trainer(config, model_path).train())


def main(args: Any) -> int:
    overrides = dict(getattr(args, "set", None) or [])
    for key in ("out", "steps", "workers", "ray_address"):
        value = getattr(args, key, None)
        if value is not None:
            overrides[key] = value
    try:
        config = load_train_config(args.config, overrides)
    except (ValueError, OSError) as e:
        raise SystemExit(str(e)) from None
    rows = train(config)
    console.print(f"{len(rows)} step(s) in {config.out} (metrics.jsonl, tb/, reward_curve.png)")
    return 0

"""`rlm-env train`: one loop, three modes (sft, rft, grpo), in a resumable run folder.

Read top to bottom: `Run` (training/run_folder.py) owns the folder; `Trainer.train()` builds the
learner (and, for rft/grpo, the vLLM engines and the rollout machinery), resumes from the last
checkpoint, then runs steps (training/steps.py):

- sft: a step is one optimizer step on `batch_size` items drawn, in a seeded order, from the
  records (`sft.data` files and/or scripted demonstrations generated through the episode loop);
- rft: a round samples K episodes per task with the current policy, keeps those that pass the
  filter, fine-tunes on them (`epochs_per_round` passes, `batch_size` a step), syncs the engines;
- grpo: a step samples G episodes for each of `tasks_per_step` tasks, computes group advantages
  (excluded episodes left out), takes `inner_steps` optimizer steps, syncs the engines.

With `rollout.max_policy_lag = k > 0` the rollouts of the next k steps are launched before the
learner trains the current one, so sampling and learning overlap; episodes sampled more than k
steps behind the learner are dropped and counted (training/lag.py). Which weights sampled each
call is read from the record (`ModelCall.checkpoint`: the engines name every sync
"<run>/step-<n>", the first "<run>/base").

The run folder: `config.json` (resolved), `checkpoints/step-NNNN/` (trainable weights, optimizer,
metrics; the last `keep_checkpoints`), `records/step-NNNN.jsonl` (every episode sampled in that
step, scored), `trained_on.jsonl` (which episode ids each step trained on), `metrics.jsonl`,
`tb/` (TensorBoard), `reward_curve.png` and, when the last step is done, `adapter/`.

Resume: step n is finished when `checkpoints/step-n` exists (written atomically after the
update). A killed run restarts at step n+1 with the learner and the engines on step n's weights;
rollouts of the unfinished step already in its records file are reused (and, like any episode,
dropped if sampled further behind than the lag bound allows), so no finished step is repeated.
With `workers > 1` the same `Trainer` runs on Ray Train's rank 0 (training/distributed.py).
"""

from __future__ import annotations

import asyncio
import shutil
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
from training.data import BatchStats, TrainItem, sft_items
from training.lag import LagStats, drop_stale
from training.learner_thread import LearnerThread
from training.run_folder import KILL_ENV, Run, episode_metrics, maybe_kill, plot_curves

__all__ = ["KILL_ENV", "Run", "Trainer", "episode_metrics", "main", "plot_curves", "train"]
console = Console(stderr=True)


class Trainer:
    """Holds the learner, the engines and the run folder for one `train()` call."""

    def __init__(
        self,
        config: TrainConfig,
        model_path: str,
        *,
        root_model: Any = None,
        sub_model: Any = None,
        learner: Any = None,
    ):
        """`root_model`/`sub_model`: already started engines to use (and leave open), e.g. one
        engine shared by several runs in a test; None starts (and later closes) our own.
        `learner`: a ready learner (Ray Train's rank 0 passes one that drives the other ranks);
        None loads one from the config."""
        self.config = config
        self.model_path = model_path
        self.run = Run(config)
        self.learner: Any = learner
        self.root_model: Any = root_model
        self.sub_model: Any = sub_model if sub_model is not None else root_model
        self._owned: list[Any] = []
        self.rollouts: Any = None
        self.rubric: Any = None
        self.tb: Any = None
        self.engine_step = 0
        """The step whose weights the engines serve (0: base), as of the last sync."""
        self._pending: dict[int, tuple[asyncio.Task, int]] = {}
        """Rollouts launched ahead: step -> (task, the engines' step when it was launched)."""
        self._launch_step = 0
        """The engines' step when the batch being trained was launched (see training/lag.py)."""
        self.learner_thread = LearnerThread()
        """Every learner step and weight export runs on this one thread (see its module)."""

    # ---- setup ----------------------------------------------------------------------------
    def _start_engines(self) -> None:
        from rlm_env.models import EngineConfig, build_model
        from training.rollout import Rollouts

        engine = EngineConfig(
            **{"placement_strategy": self.config.placement_strategy, **self.config.rollout.engine}
        )
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

    async def sync(self, step: int) -> dict[str, float]:
        """The learner's weights into the engines, named "<run>/step-<step>" ("<run>/base")."""
        from training.sync import sync_weights

        result = await sync_weights(
            self.learner,
            self.root_model,
            self._sync_path(),
            self.run.checkpoint_name(step),
            offload=self.learner_thread.run,
        )
        self.engine_step = step
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

    # ---- rollouts, possibly ahead of the learner --------------------------------------------
    def _copies(self) -> int:
        return self.config.grpo.group_size if self.config.mode == "grpo" else self.config.rft.samples_per_task

    async def _sample(self, step: int) -> tuple[list[EpisodeRecord], dict[str, float]]:
        from training.rollout import group_jobs, score, step_tasks, write_records

        jobs = group_jobs(step_tasks(self.config.rollout, step), self._copies(), step)
        path = self.run.records_dir / f"step-{step:04d}.jsonl"
        started = time.perf_counter()
        records = await self.rollouts.run(jobs, path)
        rollout_s = time.perf_counter() - started
        scoring_s = await score(records, jobs, self.rubric, self.sub_model)
        write_records(path, records)
        return records, {"time/rollout_s": rollout_s, "time/scoring_s": scoring_s}

    def _launch(self, step: int) -> None:
        if step not in self._pending and step <= self.config.steps:
            self._pending[step] = (asyncio.ensure_future(self._sample(step)), self.engine_step)

    async def rollout(self, step: int) -> tuple[list[EpisodeRecord], dict[str, float]]:
        """Step `step`'s scored episodes; then the next `max_policy_lag` steps' rollouts are
        launched, to run while the learner trains this one."""
        self._launch(step)
        task, self._launch_step = self._pending.pop(step)
        waited = time.perf_counter()
        records, times = await task
        times["time/rollout_wait_s"] = time.perf_counter() - waited  # < rollout_s when it overlapped
        for ahead in range(step + 1, step + 1 + self.config.rollout.max_policy_lag):
            self._launch(ahead)
        return records, times

    def drop_stale(self, records: list[EpisodeRecord], step: int) -> tuple[list[EpisodeRecord], LagStats]:
        """Training step `step` updates the weights of step - 1: drop what is further behind."""
        return drop_stale(
            records,
            learner_step=step - 1,
            max_lag=self.config.rollout.max_policy_lag,
            run_name=self.config.name,
            launch_step=self._launch_step,
            sub_calls=self.config.sub_call_policy == "trained",
        )

    # ---- the loop -------------------------------------------------------------------------
    async def train(self) -> list[dict[str, Any]]:
        from torch.utils.tensorboard import SummaryWriter

        from rewards import Rubric, RubricConfig
        from training.learner import Learner
        from training.steps import grpo_step, rft_step, sft_step

        config = self.config
        self.run.prepare()
        if self.learner is None:
            self.learner = Learner.from_config(self.model_path, config)
        self.rubric = Rubric(RubricConfig(**config.rubric))
        done = self.run.last_step()
        self.tb = SummaryWriter(str(self.run.dir / "tb"), purge_step=done + 1)
        if done:
            meta = self.learner.load_checkpoint(self.run.checkpoint_path(done))
            self._restore_metrics(meta)
            console.print(f"resuming {self.run.dir} after step {done}")
        pool: list[TrainItem] = []
        skipped = 0
        try:
            if config.mode == "sft":
                pool, stats = await self._sft_pool()
                console.print(f"sft: {len(pool)} samples ({stats.as_dict()})")
            else:
                self._start_engines()
                # The engines serve exactly the learner's policy before the first rollout: the
                # resumed step's weights, or the base weights under this run's name ("<run>/base").
                await self.sync(done)
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
                        metrics, trained = await sft_step(self, step, pool)
                    elif config.mode == "rft":
                        metrics, trained = await rft_step(self, step)
                    else:
                        metrics, trained = await grpo_step(self, step)
                    metrics["time/step_s"] = time.perf_counter() - started
                    row = {"step": step, "checkpoint": self.run.checkpoint_name(step), **metrics}
                    self.learner.save_checkpoint(
                        self.run.checkpoint_path(step), {"step": step, "metrics": row, "trained": trained}
                    )
                    maybe_kill(step, "after_checkpoint")
                    self._log(row, trained)
                    self.run.prune()
                    skipped += int(metrics.get("learner/skipped", 0))
                    progress.update(bar, advance=1, description=step_description(metrics, skipped))
        finally:
            await self._close()
        if self.run.last_step() == config.steps:
            self.learner.save_adapter(self.run.dir / "adapter")
        rows = self.run.metrics()
        plot_curves(rows, self.run.dir / "reward_curve.png", config.mode)
        return rows

    async def _close(self) -> None:
        for task, _ in self._pending.values():  # rollouts launched ahead of an aborted run
            task.cancel()
        await asyncio.gather(*(t for t, _ in self._pending.values()), return_exceptions=True)
        self._pending.clear()
        if self.tb is not None:
            self.tb.close()
        if self.rollouts is not None:
            await self.rollouts.close()
        for client in self._owned:
            await client.close()
        if self._owned:  # our engines are gone: free the RAM disk (a resumed run rewrites it)
            shutil.rmtree(self._sync_path(), ignore_errors=True)
        self.learner_thread.close()

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


def step_description(metrics: dict[str, float], skipped: int) -> str:
    """The progress bar's text: the step's loss, or "skipped" when it had no trainable sample
    (no optimizer step, so no loss to show), with the run's count of skipped steps."""
    if "learner/loss" in metrics:
        desc = f"loss {metrics['learner/loss']:.3f}"
    else:
        desc = "skipped (no trainable sample)"
    if skipped:
        desc += f"  skipped steps {skipped}"
    reward = metrics.get("reward/reward")
    if reward is not None:
        desc += f"  reward {reward:.3f}"
    return desc


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

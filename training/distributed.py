"""The data-parallel learner on Ray Train (`TorchTrainer`; gloo on CPU, nccl on GPU).

With `workers > 1`, `train_distributed` runs the learner on `workers` Ray Train workers, each
holding a full copy of the policy. `Learner.train_step` gives each rank its slice of the step's
items (`items[rank::world]`), normalises every slice's loss by the whole step's token count and
all-reduces and averages the trainable gradients before clipping and the update, so the averaged
gradient is exactly the single-worker gradient of the whole batch (tests/test_training_ray.py).

- sft: every rank draws the same batch itself (the order is a function of the step and the
  seed); rank 0 writes checkpoints, logs and metrics into the run folder.
- rft and grpo: rank 0 runs the whole `Trainer` (training/run.py): it starts the engines (Ray
  actors, placed by `placement_strategy`), runs the rollouts and the sandboxes, builds each
  step's items and, through `BroadcastLearner`, sends them to every rank before the step; the
  other ranks only `follow`. After each update rank 0 exports its merged weights and the engines
  reload them, exactly as with one worker. Checkpoints are rank 0's; a resumed run's other ranks
  load the same checkpoint from the run folder (on a multi-node cluster `out` must be on storage
  every node sees).

At the end of a run every rank checksums its trainable weights and rank 0 writes them to
`ranks.json` (`check_ranks_agree`): the ranks apply the same averaged gradient, so their weights
must be identical; a rank that drifted (a missed step, a different batch) fails the run there
rather than leaving rank 0's checkpoint as a silent stand-in for a learner that never agreed.

The learner workers are placed by Ray Train's `ScalingConfig` (one bundle of `learner_cpus`
CPUs, or a GPU with `device = "cuda"`, per worker, under `placement_strategy`). `--ray-address`
attaches the whole run (engines, Ray Train workers) to an existing cluster.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from training.config import TrainConfig


def sft_batch(pool: list[Any], step: int, batch_size: int, seed: int) -> list[Any]:
    """Items of optimizer step `step` (1-based): epochs of a seeded shuffle, no repeat within one."""
    start = (step - 1) * batch_size
    out = []
    for k in range(start, start + batch_size):
        epoch, index = divmod(k, len(pool))
        order = list(range(len(pool)))
        random.Random(seed * 1_000_003 + epoch).shuffle(order)
        out.append(pool[order[index]])
    return out


def _sft_worker_loop(loop_config: dict[str, Any]) -> None:
    """Runs on every Ray Train worker (torch.distributed is initialised by Ray Train)."""
    import torch.distributed as dist

    from rlm_env.episode import read_records
    from training.data import sft_items
    from training.learner import Learner
    from training.run import Run, plot_curves

    config = TrainConfig.model_validate(loop_config["config"])
    rank = dist.get_rank()
    learner = Learner.from_config(loop_config["model_path"], config)
    run = Run(config)
    done = run.last_step()
    if done:
        learner.load_checkpoint(run.checkpoint_path(done))
    records = [r for path in loop_config["data"] for r in read_records(path)]
    pool, _ = sft_items(records, max_seq_len=config.max_seq_len, only_correct=config.sft.only_correct)
    for step in range(done + 1, config.steps + 1):
        batch = sft_batch(pool, step, config.batch_size, config.seed)
        metrics = learner.train_step(batch, "sft")
        if rank == 0:
            row = {"step": step, "checkpoint": run.checkpoint_name(step), "workers": dist.get_world_size()}
            row.update({f"learner/{k}": v for k, v in metrics.items()})
            trained = [i.episode_id for i in batch]
            learner.save_checkpoint(
                run.checkpoint_path(step), {"step": step, "metrics": row, "trained": trained}
            )
            run.append("metrics.jsonl", row)
            run.append("trained_on.jsonl", {"step": step, "episode_ids": trained})
            run.prune()
        dist.barrier()
    check_ranks_agree(learner, run.dir, steps=config.steps - done)
    if rank == 0:
        plot_curves(run.metrics(), run.dir / "reward_curve.png", config.mode)


def check_ranks_agree(learner: Any, run_dir: Path, *, steps: int) -> list[list[float]]:
    """Collective, on every rank: each rank's checksum of its trainable weights (sum, sum of
    squares, in float64) and the optimizer steps it took in this call; rank 0 writes them to
    `<run>/ranks.json`. Raises on every rank when they differ: data-parallel ranks apply the same
    all-reduced gradient, so anything but identical weights means a rank missed or changed a step."""
    import torch
    import torch.distributed as dist

    with torch.no_grad():
        flat = [p.detach().double() for p in learner.params]
        mine = torch.tensor(
            [sum(float(t.sum()) for t in flat), sum(float((t * t).sum()) for t in flat), float(steps)],
            dtype=torch.float64,
        )
    gathered = [torch.zeros_like(mine) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, mine)
    checksums = [g.tolist() for g in gathered]
    if dist.get_rank() == 0:
        (run_dir / "ranks.json").write_text(
            json.dumps({"workers": len(checksums), "checksum_steps": checksums}, indent=1)
        )
    if any(c != checksums[0] for c in checksums[1:]):
        raise RuntimeError(f"data-parallel ranks disagree after training (sum, sum_sq, steps): {checksums}")
    return checksums


def ray_cpus_needed(config: TrainConfig) -> float:
    """Ray CPUs a run reserves: `workers` learner bundles of `learner_cpus`, and for rft/grpo the
    engine replicas' bundles (the root engine, and a frozen sub-model's engine of its own)."""
    learner = config.workers * config.learner_cpus
    if config.mode == "sft":
        return learner
    from rlm_env.models import EngineConfig
    from rlm_env.models.engine_pool import replica_bundle

    engine = EngineConfig(**config.rollout.engine)
    engines = 2 if config.sub_call_policy == "frozen" else 1
    return learner + engines * engine.replicas * replica_bundle(engine)["CPU"]


def check_room(config: TrainConfig, cluster_cpus: float) -> None:
    """Fail at once, with the fix, when the Ray instance this run started cannot hold its
    bundles: the engines' placement group would otherwise wait out its start deadline behind
    learner workers that hold every CPU (2 workers of 1 CPU on a 2-core machine)."""
    need = ray_cpus_needed(config)
    if need <= cluster_cpus + 1e-9:
        return
    engines = need - config.workers * config.learner_cpus
    fit = max((cluster_cpus - engines) / config.workers, 0.0)
    raise SystemExit(
        f"workers={config.workers} learner workers of learner_cpus={config.learner_cpus:g} CPU"
        + (f" plus the engines' bundles ({engines:g} CPU)" if engines else "")
        + f" need {need:g} Ray CPUs; this Ray instance has {cluster_cpus:g}. Set learner_cpus"
        f" to at most {int(fit * 100) / 100:g}, or attach to a larger cluster with --ray-address."
    )


def train_distributed(config: TrainConfig, model_path: str) -> list[dict[str, Any]]:
    """Any mode with `config.workers` data-parallel learner workers on Ray Train."""
    import asyncio

    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from training.run import Run, Trainer

    run = Run(config)
    run.prepare()
    data = [str(Path(p).resolve()) for p in config.sft.data]
    if config.mode == "sft" and config.sft.demos:  # they need the sandbox: make them here, once
        from transformers import AutoTokenizer

        asyncio.run(Trainer(config, model_path)._demos(AutoTokenizer.from_pretrained(model_path)))
        data.append(str((run.records_dir / "demos.jsonl").resolve()))
    if not ray.is_initialized():
        ray.init(include_dashboard=False, log_to_driver=False)
    if not config.ray_address:  # a cluster may autoscale; the local instance will not
        check_room(config, ray.cluster_resources().get("CPU", 0.0))
    out = str(Path(config.out).resolve())
    loop_config = {
        "config": config.model_copy(update={"out": out}).model_dump(mode="json"),
        "model_path": model_path,
        "data": data,
    }
    gpu = config.device == "cuda"  # "auto" stays on CPU workers: the driver's GPU says nothing of theirs
    trainer = TorchTrainer(
        _sft_worker_loop if config.mode == "sft" else _rl_worker_loop,
        train_loop_config=loop_config,
        scaling_config=ScalingConfig(
            num_workers=config.workers,
            use_gpu=gpu,
            resources_per_worker={"CPU": config.learner_cpus, **({"GPU": 1} if gpu else {})},
            placement_strategy=config.placement_strategy,
        ),
        torch_config=TorchConfig(backend="nccl" if gpu else "gloo"),
        run_config=RunConfig(name=f"{config.name}-learner", storage_path=str(Path(out) / "ray")),
    )
    trainer.fit()
    path = Path(out) / "metrics.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


class BroadcastLearner:
    """Rank 0's learner for rft/grpo: each `train_step` first sends its items to every rank
    (the followers run the same step on them); everything else is the wrapped `Learner`'s."""

    def __getattr__(self, name: str) -> Any:
        return getattr(self._learner, name)

    def __init__(self, learner: Any):
        self._learner = learner
        self.steps = 0
        """Optimizer steps taken through this learner (what every follower must have taken)."""

    def train_step(self, items: list[Any], objective: str) -> dict[str, float]:
        import torch.distributed as dist

        _broadcast(("train_step", items, objective))
        metrics = self._learner.train_step(items, objective)
        self.steps += 1
        return {**metrics, "workers": float(dist.get_world_size())}

    def stop(self, run_dir: Path | None = None) -> None:
        """Release the followers (also after a failure on rank 0, so no rank waits forever).
        With `run_dir` (a run that finished), every rank then checks the others' weights."""
        _broadcast(None if run_dir is None else ("verify",))
        if run_dir is not None:
            check_ranks_agree(self._learner, run_dir, steps=self.steps)


def follow(learner: Any, run_dir: Path | None = None) -> int:
    """The other ranks' loop: take part in every step rank 0 announces, until it stops (and,
    when rank 0 asks, check the ranks agree: `check_ranks_agree`)."""
    steps = 0
    while (message := _broadcast(None)) is not None:
        if message[0] == "verify":
            if run_dir is None:
                raise RuntimeError("rank 0 asked to verify the ranks, but this rank has no run folder")
            check_ranks_agree(learner, run_dir, steps=steps)
            break
        _, items, objective = message
        learner.train_step(items, objective)
        steps += 1
    return steps


def _broadcast(message: Any) -> Any:
    import torch.distributed as dist

    box = [message]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _rl_worker_loop(loop_config: dict[str, Any]) -> None:
    """rft/grpo on every Ray Train worker: rank 0 runs the `Trainer`, the others follow."""
    import asyncio

    import torch.distributed as dist

    from training.learner import Learner
    from training.run import Run, Trainer

    config = TrainConfig.model_validate(loop_config["config"])
    learner = Learner.from_config(loop_config["model_path"], config)
    run = Run(config)
    if dist.get_rank() == 0:
        leader = BroadcastLearner(learner)
        finished = False
        try:
            asyncio.run(Trainer(config, loop_config["model_path"], learner=leader).train())
            finished = True
        finally:
            leader.stop(run.dir if finished else None)
    else:
        done = run.last_step()
        if done:
            learner.load_checkpoint(run.checkpoint_path(done))
        follow(learner, run.dir)


def gradient_probe_loop(loop_config: dict[str, Any]) -> None:
    """Ray Train worker body for the gradient test: one learner step on a fixed batch of a tiny
    random llama (same seed on every rank), with the update switched off; each rank saves its
    averaged gradients to `<dir>/rank<k>.pt`. With `broadcast`, rank 0 alone has the batch and
    sends it as rft/grpo do (`BroadcastLearner`)."""
    import torch
    import torch.distributed as dist

    from training.learner import Learner, wrap_adapter

    config = TrainConfig.model_validate(loop_config["config"])
    learner = Learner(wrap_adapter(tiny_random_llama(), config), config)
    learner.optimizer.step = lambda: None  # keep the gradients, skip the update
    learner.optimizer.zero_grad = lambda set_to_none=True: None
    if loop_config.get("broadcast"):  # the rft/grpo path: only rank 0 holds the items
        if dist.get_rank() == 0:
            leader = BroadcastLearner(learner)
            leader.train_step(probe_items(), loop_config["objective"])
            leader.stop()
        else:
            assert follow(learner) == 1
    else:
        learner.train_step(probe_items(), loop_config["objective"])
    grads = {n: p.grad.clone() for n, p in learner.model.named_parameters() if p.requires_grad}
    torch.save(grads, Path(loop_config["dir"]) / f"rank{dist.get_rank()}.pt")


def tiny_random_llama(seed: int = 0, vocab_size: int = 128) -> Any:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    return LlamaForCausalLM(
        LlamaConfig(
            vocab_size=vocab_size,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            tie_word_embeddings=True,
            pad_token_id=0,
        )
    )


def probe_items(n: int = 5) -> list[Any]:
    """A fixed batch of different lengths (an odd count, so the ranks' slices differ in size)."""
    from training.data import TrainItem

    out = []
    for k in range(n):
        length = 8 + 3 * k
        ids = [(5 * k + 7 * t) % 120 + 3 for t in range(length)]
        mask = [0] * 4 + [1] * (length - 4)
        lps: list[float | None] = [None] * 4 + [-4.5] * (length - 4)
        out.append(TrainItem(f"e{k}", "g", ids, mask, lps, advantage=(-1) ** k * 0.7))
    return out

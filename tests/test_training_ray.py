"""The data-parallel learner on Ray Train: 2 CPU workers (gloo) average their gradients into
exactly the single-worker gradient of the same batch, both when every rank draws the batch
itself (sft) and when rank 0 alone holds it and broadcasts it (rft and grpo, whose rollouts
live on rank 0: `BroadcastLearner` / `follow`). And before any worker starts, a Ray instance
without room for the learner workers and the engines' bundles is refused, naming the fix."""

from __future__ import annotations

import pytest
import torch

from training.config import TrainConfig, load_train_config
from training.distributed import gradient_probe_loop, probe_items, tiny_random_llama
from training.learner import Learner, wrap_adapter

pytestmark = pytest.mark.slow


def single_worker_grads(config: TrainConfig, objective: str) -> dict[str, torch.Tensor]:
    learner = Learner(wrap_adapter(tiny_random_llama(), config), config)
    learner.optimizer.step = lambda: None
    learner.optimizer.zero_grad = lambda set_to_none=True: None
    learner.train_step(probe_items(), objective)
    return {n: p.grad.clone() for n, p in learner.model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize(("objective", "broadcast"), [("grpo", False), ("grpo", True)])
def test_two_ray_train_workers_average_to_the_single_worker_gradient(tmp_path, objective, broadcast):
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    config = TrainConfig(mode="grpo", precision="fp32", micro_batch=2)
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        TorchTrainer(
            gradient_probe_loop,
            train_loop_config={
                "config": config.model_dump(mode="json"),
                "objective": objective,
                "broadcast": broadcast,
                "dir": str(tmp_path),
            },
            scaling_config=ScalingConfig(num_workers=2, use_gpu=False, resources_per_worker={"CPU": 0.5}),
            torch_config=TorchConfig(backend="gloo"),
            run_config=RunConfig(name="grad-probe", storage_path=str(tmp_path / "ray")),
        ).fit()
    finally:
        if started:
            ray.shutdown()
    rank0 = torch.load(tmp_path / "rank0.pt")
    rank1 = torch.load(tmp_path / "rank1.pt")
    single = single_worker_grads(config, objective)
    assert set(rank0) == set(single)
    nonzero = 0
    for name, grad in single.items():
        assert torch.equal(rank0[name], rank1[name]), name  # all-reduced: identical on both ranks
        assert torch.allclose(rank0[name], grad, atol=1e-7, rtol=1e-4), name
        nonzero += int(grad.abs().sum() > 0)
    assert nonzero > 0


@pytest.mark.parametrize(
    ("extra", "cpus", "fits"),
    [
        ({"workers": 2, "learner_cpus": 1.0}, 2.0, False),  # the engine's bundle has no room
        ({"workers": 2, "learner_cpus": 0.5}, 2.0, True),
        ({"workers": 2, "learner_cpus": 0.995, "sub_call_policy": "frozen"}, 2.0, False),  # 2 engines
        ({"workers": 4, "learner_cpus": 1.0}, 8.0, True),
    ],
)
def test_a_cluster_without_room_for_learners_and_engines_fails_at_once(tmp_path, extra, cpus, fits):
    """2 learner workers of 1 CPU on a 2-CPU Ray leave the engine's placement group waiting out
    its start deadline; `check_room` says so before anything starts, with the learner_cpus that fit."""
    from training.distributed import check_room

    data = {"mode": "grpo", "out": str(tmp_path), **extra}
    config = load_train_config(data=data)
    if fits:
        check_room(config, cpus)
    else:
        with pytest.raises(SystemExit, match="learner_cpus to at most 0.99"):
            check_room(config, cpus)

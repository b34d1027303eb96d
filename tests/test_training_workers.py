"""GRPO with 2 data-parallel learner workers (Ray Train, gloo) on the real parts, end to end.

`rlm-env train` with `workers = 2` runs the whole trainer on Ray Train's rank 0 (the vLLM engine,
the bwrap sandboxes, the rubric, the run folder) while rank 1 follows every optimizer step on
the items rank 0 broadcasts (training/distributed.py). The gradient arithmetic is checked on a
tiny model in tests/test_training_ray.py; this test checks the loop around it on the default
model:
- every step finishes, and each step's episodes were sampled by the weights of the step before
  (the engine on rank 0 reloads rank 0's merged weights after each update);
- the trained tokens are exactly the sampled ones;
- both ranks took every optimizer step and end with identical weights (`ranks.json`).
"""

from __future__ import annotations

import json

import pytest

from tests.test_training_engine import assert_trained_tokens_are_sampled, tiny
from training.config import load_train_config
from training.run import train

pytestmark = [pytest.mark.slow, pytest.mark.engine]


def test_grpo_with_two_learner_workers(default_model_path, tmp_path):
    out = tmp_path / "w2"
    data = tiny("grpo", out, steps=2, grpo={"group_size": 3}, workers=2, learner_cpus=0.5)
    data["rollout"]["engine"] = {"max_model_len": 2048, "kvcache_gb": 0.5}
    config = load_train_config(data=data)
    rows = train(config)
    assert [r["step"] for r in rows] == [1, 2]
    trained = [json.loads(x) for x in (out / "trained_on.jsonl").read_text().splitlines()]
    sampled_by = {1: "w2/base", 2: "w2/step-1"}
    for row, step_trained in zip(rows, trained, strict=True):
        records = assert_trained_tokens_are_sampled(out, row["step"], step_trained["episode_ids"])
        assert len(records) == 3
        roots = [c for r in records for c in r.calls if c.role == "root" and c.error is None]
        assert roots and all(c.checkpoint == sampled_by[row["step"]] for c in roots)
        if "learner/loss" in row:
            assert row["learner/workers"] == 2
    updates = sum(1 for r in rows if "learner/loss" in r)
    assert updates > 0, rows  # the cost term gives every group variance
    ranks = json.loads((out / "ranks.json").read_text())
    assert ranks["workers"] == 2
    rank0, rank1 = ranks["checksum_steps"]
    assert rank0 == rank1 and rank0[2] == updates
    assert (out / "adapter").is_dir() and (out / "reward_curve.png").exists()

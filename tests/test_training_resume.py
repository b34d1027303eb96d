"""A killed run resumes from its last checkpoint and repeats no step (real processes, SIGKILL).

The run is SFT on a tiny random llama (saved with the default model's tokenizer) and synthetic
records, so each step takes well under a second; the kill points are the trainer's own test hook
(`RLM_TRAIN_KILL_AT`), which SIGKILLs the process between the update and its checkpoint, and
between the checkpoint and the logs: the two places where a naive loop would lose or repeat a
step.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.training_helpers import tiny_sft_config

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.slow


def _train(config: Path, out: Path, kill_at: str | None) -> int:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("RLM_TRAIN_KILL_AT", None)
    if kill_at:
        env["RLM_TRAIN_KILL_AT"] = kill_at
    cmd = [sys.executable, "-m", "rlm_env.cli", "train", "--config", str(config), "--out", str(out)]
    return subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, timeout=300).returncode


def test_killed_run_resumes_and_repeats_no_step(tmp_path):
    config = tiny_sft_config(tmp_path, 6, 'steps = 4\nbatch_size = 2\nmicro_batch = 2\nprecision = "fp32"')
    out = tmp_path / "run"
    assert _train(config, out, "2:after_update") == -9  # killed before step 2's checkpoint
    assert _train(config, out, "3:after_checkpoint") == -9  # killed before step 3's logs
    assert _train(config, out, None) == 0
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    trained = [json.loads(x) for x in (out / "trained_on.jsonl").read_text().splitlines()]
    assert [t["step"] for t in trained] == [1, 2, 3, 4]
    meta = json.loads((out / "checkpoints" / "step-0004" / "meta.json").read_text())
    assert meta["learner_step"] == 4  # four optimizer updates in all, none repeated
    # The data order is a function of the step alone: each epoch sees every record once.
    seen = [e for t in trained[:3] for e in t["episode_ids"]]
    assert sorted(seen) == [f"e{k}" for k in range(6)]
    assert (out / "reward_curve.png").stat().st_size > 0
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-0003", "step-0004"]

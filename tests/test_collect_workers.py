"""Collection that survives a kill -9, and several workers writing one dataset (two local Ray
workers). Scripted root (see collect_helpers): what is tested is the bookkeeping, not a model."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rlm_env.collect import load_collected
from rlm_env.collect.dataset import dataset_files
from rlm_env.collect.run import CollectConfig, run_on_ray, run_worker, worker_dir, worker_tasks
from rlm_env.episode import read_records
from rlm_env.episode.config import config_from_dict
from tests.collect_helpers import scripted_models

pytestmark = pytest.mark.slow
OVERRIDES = {"budget.max_depth": 2}
REPO = Path(__file__).resolve().parents[1]


def test_a_run_killed_mid_way_resumes_without_losing_or_repeating_an_episode(tmp_path):
    cfg = CollectConfig(task="niah", lengths=["1k"], episodes=8, concurrency=2, out=str(tmp_path / "run"))
    path = worker_dir(cfg.out, "w0") / "trajectories.jsonl"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.collect_helpers", cfg.model_dump_json(), json.dumps(OVERRIDES)],
        cwd=REPO,
        env=env,
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and proc.poll() is None:
            if path.exists() and len(path.read_text().splitlines()) >= 2:
                break
            time.sleep(0.2)
        assert proc.poll() is None, proc.stdout.read().decode()[-2000:]
        os.killpg(proc.pid, signal.SIGKILL)  # the whole group: the collector and its sandboxes
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    before = [r.episode_id for r in read_records(path)]
    assert 2 <= len(before) < 8, "the kill should land mid-run"
    assert not dataset_files(cfg.out), "shards are written only once the worker's episodes are done"

    assert run_worker(cfg, config_from_dict({}, OVERRIDES), scripted_models) == 8
    after = [r.episode_id for r in read_records(path)]
    assert after[: len(before)] == before
    assert len(after) == len(set(after)) == 8
    assert sorted(after) == sorted(t.id for t in worker_tasks(cfg))
    assert sorted(load_collected(cfg.out)["episode_id"]) == sorted(after)


def test_two_ray_workers_collect_into_one_dataset(tmp_path):
    import ray

    cfg = CollectConfig(
        task="niah", lengths=["1k", "2k"], episodes=3, concurrency=2, out=str(tmp_path / "run")
    )
    started = not ray.is_initialized()
    try:
        counts = run_on_ray(cfg, config_from_dict({}, OVERRIDES), workers=2, make_models=scripted_models)
    finally:
        if started:
            ray.shutdown()
    assert counts == {"ray-0": 3, "ray-1": 3}
    names = sorted(Path(p).name for p in dataset_files(cfg.out))
    assert names == ["ray-0-00000.parquet", "ray-1-00000.parquet"]
    ds = load_collected(cfg.out)
    everything = sorted(t.id for t in worker_tasks(cfg))
    assert sorted(ds["episode_id"]) == everything and len(everything) == 6
    for worker in ("ray-0", "ray-1"):
        shard = [r.episode_id for r in read_records(worker_dir(cfg.out, worker) / "trajectories.jsonl")]
        assert sorted(shard) == sorted(
            e for e, w in zip(ds["episode_id"], ds["worker"], strict=True) if w == worker
        )
    # worker i ran exactly its slice of the task list: tasks i, i+2, i+4
    for i in (0, 1):
        mine = worker_tasks(cfg.model_copy(update={"worker_index": i, "num_workers": 2}))
        assert {
            w for e, w in zip(ds["episode_id"], ds["worker"], strict=True) if e in {t.id for t in mine}
        } == {f"ray-{i}"}

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


def _collector(cfg: CollectConfig) -> subprocess.Popen:
    """`run_worker` in a subprocess of its own process group (as a terminal runs a command)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    return subprocess.Popen(
        [sys.executable, "-m", "tests.collect_helpers", cfg.model_dump_json(), json.dumps(OVERRIDES)],
        cwd=REPO,
        env=env,
        start_new_session=True,
        # A shell that runs the suite in the background (`make test &`) hands it SIGINT ignored;
        # Python then installs no KeyboardInterrupt handler, and the Ctrl-C below would be lost.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def _stop_after(proc: subprocess.Popen, path: Path, lines: int, sig: int) -> None:
    """Send `sig` to the collector's whole group once `path` holds `lines` records."""
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and proc.poll() is None:
            if path.exists() and len(path.read_text().splitlines()) >= lines:
                break
            time.sleep(0.1)
        assert proc.poll() is None, proc.stdout.read().decode()[-2000:]
        os.killpg(proc.pid, sig)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


def test_a_run_interrupted_then_killed_resumes_without_losing_or_repeating_an_episode(tmp_path):
    cfg = CollectConfig(task="niah", lengths=["1k"], episodes=40, concurrency=2, out=str(tmp_path / "run"))
    path = worker_dir(cfg.out, "w0") / "trajectories.jsonl"

    _stop_after(_collector(cfg), path, 2, signal.SIGINT)  # Ctrl-C
    first = [r.episode_id for r in read_records(path)]
    assert 2 <= len(first) < 40, "the interrupt should land mid-run"
    _stop_after(_collector(cfg), path, len(first) + 2, signal.SIGKILL)  # kill -9, collector and sandboxes
    second = [r.episode_id for r in read_records(path)]
    assert second[: len(first)] == first and len(first) < len(second) < 40
    assert len(second) == len(set(second))
    assert not dataset_files(cfg.out), "shards are written only once the worker's episodes are done"

    assert run_worker(cfg, config_from_dict({}, OVERRIDES), scripted_models) == 40
    after = [r.episode_id for r in read_records(path)]
    assert after[: len(second)] == second
    assert len(after) == len(set(after)) == 40
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

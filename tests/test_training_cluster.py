"""`rlm-env train --ray-address` attaches to an existing cluster.

The test starts its own one-node cluster with `ray start --head --block` (its own temp dir and
ports, so it never touches another Ray instance on the machine), runs one SFT step with two
learner workers through the CLI against it, and checks that the Ray Train workers ran on that
cluster (their logs are in its session folder). The cluster is stopped by ending the process
group this test started (never `ray stop`, which would stop every Ray instance on the machine).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from ray._private import services as ray_services

from tests.training_helpers import tiny_sft_config

ROOT = Path(__file__).resolve().parent.parent
RAY = Path(sys.executable).parent / "ray"

pytestmark = pytest.mark.slow


def free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def ray_env() -> dict[str, str]:
    """`ray start` enables token authentication by default (Ray 2.5x); a local test cluster
    and its driver both run without it."""
    return {**os.environ, "RAY_AUTH_MODE": "disabled", "PYTHONPATH": str(ROOT)}


def start_head(temp_dir: str) -> tuple[subprocess.Popen, str]:
    names = (
        "--port",
        "--node-manager-port",
        "--object-manager-port",
        "--ray-client-server-port",
        "--dashboard-agent-listen-port",
        "--dashboard-agent-grpc-port",
        "--metrics-export-port",
        "--runtime-env-agent-port",
    )
    ports = free_ports(len(names))
    cmd = [str(RAY), "start", "--head", "--block", "--num-cpus=2", f"--temp-dir={temp_dir}"]
    # The node's own address, as a driver on this machine detects it (127.0.0.1 would not match).
    ip = ray_services.get_node_ip_address()
    cmd += [f"--node-ip-address={ip}", "--include-dashboard=false", "--disable-usage-stats"]
    cmd += [f"{name}={port}" for name, port in zip(names, ports, strict=True)]
    log = Path(temp_dir) / "head.log"
    with open(log, "wb") as sink:
        head = subprocess.Popen(
            cmd, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True, cwd=ROOT, env=ray_env()
        )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if head.poll() is not None:
            raise RuntimeError(f"ray start --head exited with {head.returncode}: {log.read_text()[-2000:]}")
        if "Ray runtime started" in log.read_text(errors="replace"):
            return head, f"{ip}:{ports[0]}"
        time.sleep(1)
    stop_head(head, temp_dir)
    raise RuntimeError("the test cluster did not come up within 120 s")


def stop_head(head: subprocess.Popen, temp_dir: str) -> None:
    """End the process group we started, then any process of this cluster left over (found by
    its unique temp dir in the command line), by pid."""
    try:
        os.killpg(head.pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    try:
        head.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(head.pid, signal.SIGKILL)
        head.wait(timeout=10)
    deadline = time.monotonic() + 20
    while (left := _cluster_pids(temp_dir)) and time.monotonic() < deadline:
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.5)


def _cluster_pids(temp_dir: str) -> list[int]:
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if temp_dir.encode() in (proc / "cmdline").read_bytes():
                pids.append(int(proc.name))
        except OSError:
            continue
    return pids


def test_train_attaches_to_a_running_cluster(tmp_path):
    config = tiny_sft_config(
        tmp_path,
        4,
        'steps = 1\nbatch_size = 2\nmicro_batch = 1\nlearner_cpus = 0.5\nplacement_strategy = "STRICT_PACK"',
    )
    temp_dir = tempfile.mkdtemp(prefix="rlmray", dir="/tmp")  # short: Ray's socket paths are capped
    head, address = start_head(temp_dir)
    try:
        out = tmp_path / "run"
        env = ray_env()
        env.pop("RAY_ADDRESS", None)
        cmd = [sys.executable, "-m", "rlm_env.cli", "train", "--config", str(config), "--out", str(out)]
        cmd += ["--workers", "2", "--ray-address", address]
        done = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        (row,) = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
        assert row["step"] == 1 and row["workers"] == 2 and row["learner/sequences"] == 2
        # The Ray Train workers ran on the cluster we started: their logs are in its session.
        logs = list(Path(temp_dir).glob("session_*/logs/worker-*"))
        assert any("RayTrainWorker" in p.read_text(errors="replace") for p in logs if p.is_file())
    finally:
        stop_head(head, temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)
    assert _cluster_pids(temp_dir) == []

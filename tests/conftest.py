"""Shared fixtures: the default model and ONE vLLM-in-Ray client for the whole test run.

Engine starts dominate test time on 2 CPU cores (~35-45 s for two replicas), so every test
that needs a real engine shares the session-scoped `vllm_client`: two replicas (two are
needed to observe sticky routing and to survive a killed replica) with a small KV cache.
Ray starts once, with the first test that asks for the client, and stops at the end.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Keep the tokenizers library from forking warnings/deadlocks under Ray and vLLM processes.
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# The whole suite keeps a few 135M engines and learners alive at once (session and module
# fixtures); on a 24 GiB machine Ray's memory monitor (kill at 95% of RAM) then shoots engine
# workers while a test syncs weights, though the kernel still has room. Raise its line.
os.environ.setdefault("RAY_memory_usage_threshold", "0.99")

ENGINE_TEST_CONFIG = dict(
    replicas=2, kvcache_gb=0.5, max_model_len=4096, request_timeout_s=120.0, max_retries=2
)


@pytest.fixture(scope="session")
def default_model_path() -> Path:
    """The converted default model (built on first use, ~20 s; a cache hit costs ~0.2 s)."""
    from rlm_env.models.default_model import ensure_default_model

    return ensure_default_model()


@pytest.fixture(scope="session")
def vllm_client(default_model_path):
    """A started `VLLMRayClient` (2 replicas) on the default model, shared by all tests."""
    import ray

    from rlm_env.models.config import EngineConfig
    from rlm_env.models.engine_pool import VLLMRayClient, ensure_ray

    started_ray = not ray.is_initialized()
    ensure_ray(num_cpus=os.cpu_count())
    client = VLLMRayClient(str(default_model_path), EngineConfig(**ENGINE_TEST_CONFIG), name="smol").start()
    print(f"\n[vllm_client] 2 replicas started in {client.start_seconds:.1f} s")
    yield client
    client.shutdown()
    if started_ray:
        ray.shutdown()


@pytest.fixture(scope="session")
def reference_model(default_model_path):
    """The default model in plain transformers, float32: the learner's view against which real
    engines' logprobs are checked (`rlm_env.models.logprob_check`). Loaded once (~2 s, 0.5 GB)."""
    from rlm_env.models.logprob_check import load_reference_model

    return load_reference_model(default_model_path)

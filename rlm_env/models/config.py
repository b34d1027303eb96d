"""Engine settings shared by every model backend.

One frozen, hashable object describes how to run an engine, so that two callers asking for the
same spec with equal settings can share a single engine (see `build_model`). The defaults are
the ones verified on the CPU machines this project runs on (2 cores, no GPU): small KV cache,
eager mode, bf16, and an explicit memory fraction because vLLM's default fails there.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class EngineConfig(BaseModel):
    """How to run a model engine (vLLM in Ray, vLLM over HTTP, transformers)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    replicas: int = Field(default=1, ge=1)
    """Number of vLLM engine replicas (one Ray actor each). On 2 CPU cores, 2 replicas
    pin one core each; more replicas than cores only adds contention."""

    max_model_len: int = Field(default=8192, ge=128)
    """Longest prompt plus completion, in tokens, one request may use."""

    kvcache_gb: float = Field(default=1.0, gt=0)
    """KV-cache size per replica in GiB (vLLM's `kv_cache_memory_bytes`; the CPU backend
    reserves it up front). 1 GiB holds about 45k tokens of the 135M default model."""

    gpu_memory_utilization: float = Field(default=0.3, gt=0, le=1)
    """vLLM's memory fraction. On CPU it is a fraction of host RAM checked at start; 0.3 is
    the value verified here (vLLM's default 0.9 refuses to start)."""

    request_timeout_s: float = Field(default=300.0, gt=0)
    """Longest one request may take (queueing included) before it is aborted with ModelError."""

    start_timeout_s: float = Field(default=300.0, gt=0)
    """Longest an engine replica (or an HTTP server) may take to come up."""

    max_retries: int = Field(default=2, ge=0)
    """How many times a request is retried on a replacement replica after its replica died
    (HTTP clients: after a refused connection or a 5xx)."""

    max_inflight: int = Field(default=64, ge=1)
    """Most requests one client has outstanding at once, over all its replicas; callers beyond
    it wait. Bounds memory and queueing when many episodes fan out sub-calls."""

    cpu_threads: int | None = Field(default=None, ge=1)
    """OpenMP threads per replica. None: the machine's cores divided among the replicas."""

    cpu_bind: str = "auto"
    """vLLM's VLLM_CPU_OMP_THREADS_BIND per replica. "auto": give each replica its own slice
    of cores (replica i gets cores [i*t, (i+1)*t)); "all": every replica binds all cores
    (oversubscribes when replicas > 1); any other string is passed to every replica as-is."""

    dtype: Literal["bfloat16", "float16", "float32", "auto"] = "bfloat16"
    """Weights and activations dtype."""

    seed: int = 0
    """Engine seed (per-request seeds in SamplingParams override it for that request)."""

    logprobs_mode: Literal["processed_logprobs", "raw_logprobs"] = "processed_logprobs"
    """Which logprobs vLLM reports: after temperature/top-p (the sampling policy, what the
    RL importance ratio needs) or from the raw logits."""

    enable_prefix_caching: bool = True
    """Reuse KV of shared prompt prefixes (root turns of one episode, GRPO groups)."""

    actor_num_cpus: float = Field(default=0.0, ge=0)
    """Ray CPU resources each replica actor claims. 0 keeps Ray's logical CPUs free for
    sandboxes and other actors; the real CPU placement is `cpu_bind`."""

    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK"] | None = None
    """Place the replicas with a Ray placement group, one bundle per replica (`actor_num_cpus`
    CPUs, `gpus_per_replica` GPUs): "PACK" fills nodes in turn where it can, "SPREAD" puts
    replicas on different nodes where it can, "STRICT_PACK" requires one node for all. None:
    Ray places each actor on its own. A replacement replica takes its predecessor's bundle."""

    gpus_per_replica: float = Field(default=0.0, ge=0)
    """Ray GPU resources each replica actor claims (the GPU `vllm` of the `gpu` extra; with
    `tensor_parallel_size` > 1, that many). 0 on CPU."""

    tensor_parallel_size: int = Field(default=1, ge=1)
    """vLLM tensor parallelism inside one replica (GPUs only; not run on this CPU machine)."""

    engine_niceness: int | None = 0
    """Scheduling niceness for the engine processes. Ray starts its workers at niceness 15,
    so any normal process (sandboxed code, the episode loop) would preempt generation;
    0 restores normal priority (best effort: lowering niceness needs privileges). None keeps
    Ray's default."""

    share_engine: bool = True
    """Let `build_model` hand out one process-wide engine for identical (spec, config)
    pairs, e.g. root and sub-calls on the same model. False gives each caller its own."""

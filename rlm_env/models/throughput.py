"""How fast sub-calls go: a client's batch path against vLLM called directly.

`measure_batch_throughput` sends the same N prompts through a client's `generate_many` (the
path `llm_batch` fan-outs take: routing, Ray hops, retries bookkeeping) and, optionally,
straight into an in-process `AsyncLLM` with the same engine settings on all cores. The gap
is what the Ray layer costs (or, with several replicas, gains). Benchmarks call it; the test
suite calls it once to report the numbers.

The direct engine is started and shut down inside the call, so it only competes for CPU
with idle replicas; run it in a script guarded by `if __name__ == "__main__":` (vLLM spawns).
"""

from __future__ import annotations

import asyncio
import gc
import os
import time
import uuid
from contextlib import contextmanager
from typing import Any

from .base import Completion, Message, SamplingParams, chat_prompt_ids
from .config import EngineConfig
from .vllm_engine import engine_args, replica_env, sampled_logprobs, vllm_sampling


def _summary(seconds: float, prompt_tokens: int, completion_tokens: int, requests: int) -> dict[str, float]:
    return {
        "seconds": round(seconds, 3),
        "requests": requests,
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "completion_tokens_per_s": round(completion_tokens / seconds, 1) if seconds else 0.0,
        "requests_per_s": round(requests / seconds, 2) if seconds else 0.0,
    }


@contextmanager
def _temporary_env(values: dict[str, str]):
    saved = {key: os.environ.get(key) for key in [*values, "VLLM_CPU_KVCACHE_SPACE"]}
    os.environ.update(values)
    os.environ.pop("VLLM_CPU_KVCACHE_SPACE", None)  # would override kv_cache_memory_bytes
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


async def run_direct_engine(
    model: str, config: EngineConfig, messages_list: list[list[Message]], sampling: SamplingParams
) -> dict[str, Any]:
    """Start an in-process AsyncLLM (one engine, all cores), run the prompts concurrently,
    shut it down; returns the timing summary plus its start time."""
    from transformers import AutoTokenizer
    from vllm.inputs import TokensPrompt
    from vllm.v1.engine.async_llm import AsyncLLM

    single = config.model_copy(update={"replicas": 1})
    tokenizer = AutoTokenizer.from_pretrained(model)
    params = vllm_sampling({**sampling.__dict__, "stop": list(sampling.stop)})
    started = time.perf_counter()
    with _temporary_env(replica_env(single, 0)):
        engines = [AsyncLLM.from_engine_args(engine_args(model, single))]  # a list: see finally

    async def one(messages: list[Message]) -> tuple[int, int]:
        prompt_ids = chat_prompt_ids(tokenizer, messages)
        final = None
        stream = engines[0].generate(TokensPrompt(prompt_token_ids=prompt_ids), params, uuid.uuid4().hex)
        async for output in stream:
            final = output
        sample = final.outputs[0]
        sampled_logprobs(list(sample.token_ids), sample.logprobs)  # same post-processing as replicas
        return len(prompt_ids), len(sample.token_ids)

    try:
        await one([{"role": "user", "content": "Hi"}])  # one-time kernel setup, as replicas do in start()
        start_seconds = time.perf_counter() - started
        began = time.perf_counter()
        counts = await asyncio.gather(*(one(messages) for messages in messages_list))
        elapsed = time.perf_counter() - began
    finally:
        engines.pop().shutdown()
        gc.collect()  # run AsyncLLM.__del__ now, not at interpreter exit when vLLM's helpers are gone
    summary = _summary(elapsed, sum(c[0] for c in counts), sum(c[1] for c in counts), len(counts))
    return {**summary, "engine_start_s": round(start_seconds, 1), "cpu_bind": replica_env(single, 0)}


async def measure_batch_throughput(
    client: Any,
    messages_list: list[list[Message]],
    sampling: SamplingParams,
    *,
    direct: bool = True,
    direct_config: EngineConfig | None = None,
) -> dict[str, Any]:
    """Time `client.generate_many(messages_list, sampling)`; with `direct=True` also time the
    same prompts on an in-process AsyncLLM (needs `client.model`, a local checkpoint).

    Returns {"client": summary, "direct": summary | None, "client_vs_direct": ratio}. Use
    greedy sampling (temperature 0) so both paths generate comparable lengths.
    """
    began = time.perf_counter()
    if hasattr(client, "generate_many"):
        results: list[Completion] = await client.generate_many(messages_list, sampling)
    else:
        results = await asyncio.gather(*(client.generate(m, sampling) for m in messages_list))
    elapsed = time.perf_counter() - began
    report: dict[str, Any] = {
        "client": {
            **_summary(
                elapsed,
                sum(r.num_prompt_tokens for r in results),
                sum(r.num_completion_tokens for r in results),
                len(results),
            ),
            "replicas": sorted({r.replica for r in results if r.replica}),
        },
        "direct": None,
    }
    if direct:
        config = direct_config or getattr(client, "config", None) or EngineConfig()
        report["direct"] = await run_direct_engine(client.model, config, messages_list, sampling)
        direct_rate = report["direct"]["completion_tokens_per_s"]
        if direct_rate:
            report["client_vs_direct"] = round(report["client"]["completion_tokens_per_s"] / direct_rate, 2)
    return report

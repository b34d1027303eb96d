"""`build_model`, `EngineConfig` and the test doubles (no engines started)."""

from __future__ import annotations

import pydantic
import pytest

from rlm_env.models import (
    EchoModel,
    EngineConfig,
    InstantModel,
    ModelClient,
    SamplingParams,
    build_model,
    close_all_models,
    parse_model_spec,
)
from rlm_env.models.vllm_engine import replica_env


def test_engine_config_is_frozen_strict_and_hashable():
    config = EngineConfig(replicas=2)
    with pytest.raises(pydantic.ValidationError):
        config.replicas = 3
    with pytest.raises(pydantic.ValidationError):
        EngineConfig(replica=2)
    assert hash(config) == hash(EngineConfig(replicas=2))


def test_every_config_field_has_a_docstring():
    import inspect

    source = inspect.getsource(EngineConfig)
    for name in EngineConfig.model_fields:
        after = source.split(f"    {name}:", 1)[1].split("\n", 2)
        assert after[1].strip().startswith('"""'), f"{name} lacks a docstring"


def test_replica_env_splits_cores():
    two = EngineConfig(replicas=2)
    envs = [replica_env(two, i) for i in range(2)]
    assert all(env["VLLM_CPU_NUM_OF_RESERVED_CPU"] == "0" for env in envs)
    binds = {env["VLLM_CPU_OMP_THREADS_BIND"] for env in envs}
    assert len(binds) == len(envs) or len(binds) == 1  # distinct cores when there are enough
    assert replica_env(EngineConfig(cpu_bind="0"), 0)["VLLM_CPU_OMP_THREADS_BIND"] == "0"


def test_parse_model_spec(tmp_path):
    assert parse_model_spec("echo") == ("echo", "")
    assert parse_model_spec("openai:http://h:1/v1#m") == ("openai", "http://h:1/v1#m")
    assert parse_model_spec("hf:default") == ("hf", "default")
    assert parse_model_spec("vllm:org/model") == ("vllm", "org/model")
    assert parse_model_spec(str(tmp_path))[1] == str(tmp_path)
    with pytest.raises(ValueError, match="unknown model spec"):
        parse_model_spec("no-such-thing")


async def test_doubles_and_shared_cache():
    echo = build_model("echo")
    assert isinstance(echo, EchoModel) and isinstance(echo, ModelClient)
    reply = await echo.generate([{"role": "user", "content": "hello world"}], SamplingParams(max_tokens=1))
    assert reply.text == "hell" and reply.finish_reason == "length" and not reply.token_ids_available
    assert reply.extras["token_ids_missing"]
    instant = build_model("instant", role="sub")
    assert isinstance(instant, InstantModel)
    assert (await instant.generate([], SamplingParams())).text == "ok"
    root = build_model("openai:http://127.0.0.1:9/v1#m", role="root")
    sub = build_model("openai:http://127.0.0.1:9/v1#m", role="sub")
    assert root is sub
    separate = EngineConfig(share_engine=False)
    assert build_model("openai:http://127.0.0.1:9/v1#m", role="root", config=separate) is not build_model(
        "openai:http://127.0.0.1:9/v1#m", role="sub", config=separate
    )
    await close_all_models()


async def test_a_reload_drops_the_prefix_cache_even_with_requests_running():
    """The KV cached before a reload came from the old weights. vLLM's plain reset refuses while
    any request holds blocks (it only logs a warning), and later prompts would then reuse that
    stale KV; a replica therefore asks it to preempt the running requests, and a refusal that
    remains is an error, never silence. (The engine here is a double that records the calls;
    tests/test_training_engine.py reloads a real one under a policy lag.)"""
    from rlm_env.models.vllm_engine import VLLMReplica

    class Engine:
        def __init__(self, reset_ok: bool):
            self.calls: list = []
            self.reset_ok = reset_ok

        async def collective_rpc(self, method, kwargs):
            self.calls.append((method, kwargs))

        async def reset_prefix_cache(self, reset_running_requests=False):
            self.calls.append(("reset_prefix_cache", reset_running_requests))
            return self.reset_ok or not reset_running_requests

    replica = VLLMReplica("m", EngineConfig().model_dump(), "smol/r0")
    replica.engine = Engine(reset_ok=True)
    assert await replica.reload_weights("/w", checkpoint="run/step-1") == 1
    assert replica.engine.calls == [
        ("reload_weights", {"weights_path": "/w"}),
        ("reset_prefix_cache", True),
    ]
    assert replica.checkpoint == "run/step-1" and not replica.reloading
    replica.engine = Engine(reset_ok=False)
    with pytest.raises(RuntimeError, match="prefix cache"):
        await replica.reload_weights("/w2", checkpoint="run/step-2")
    assert not replica.reloading and replica.checkpoint is None  # no name for unsure weights

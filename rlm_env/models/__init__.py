"""Model engines behind one interface (`ModelClient`), and `build_model` to pick one by name.

Model specs (what `--model` / `--sub-model` options take):

    "default"                   the embedded SmolLM2-135M-Instruct (built into the cache on
                                first use), on vLLM-in-Ray; on transformers where vLLM or Ray
                                is not installed (e.g. the GPU machine)
    "<local dir>"               a local HF checkpoint, same engine choice as "default"
    "vllm:<dir|name>"           vLLM engine replicas in Ray (`VLLMRayClient`)
    "openai:<base_url>#<model>" any /v1/chat/completions server (`OpenAIChatClient`); the key
                                comes from $OPENAI_API_KEY, e.g. "openai:http://127.0.0.1:8000/v1#smol"
    "hf:<dir|default>"          plain transformers in this process (`TransformersClient`)
    "echo" / "instant"          test doubles that are not models (`EchoModel`, `InstantModel`)

`build_model` starts engines (vLLM: ~35 s) and, when `config.share_engine` is on, hands out
one process-wide client per (spec, config): a root model and its sub-calls on the same spec
share one engine; with `share_engine=False` each role gets its own (e.g. a frozen sub-model
beside a root being trained). Close shared engines with `close_all_models()`.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Literal

from .base import Completion, Message, ModelClient, ModelError, SamplingParams, chat_prompt_ids
from .config import EngineConfig
from .default_model import DEFAULT_MODEL_NAME, ensure_default_model, list_cached_models, resolve_model
from .echo import EchoModel, InstantModel

__all__ = [
    "DEFAULT_MODEL_NAME",
    "Completion",
    "EchoModel",
    "EngineConfig",
    "InstantModel",
    "Message",
    "ModelClient",
    "ModelError",
    "SamplingParams",
    "build_model",
    "chat_prompt_ids",
    "close_all_models",
    "ensure_default_model",
    "list_cached_models",
    "parse_model_spec",
    "resolve_model",
]

Role = Literal["root", "sub"]
_SHARED: dict[tuple, ModelClient] = {}


def vllm_available() -> bool:
    """True when vLLM and Ray can be imported (not on the transformers-only GPU machine)."""
    return all(importlib.util.find_spec(name) is not None for name in ("vllm", "ray"))


def parse_model_spec(spec: str) -> tuple[str, str]:
    """Split a spec into (kind, target); kind in vllm, openai, hf, echo, instant."""
    if spec in ("echo", "instant"):
        return spec, ""
    for kind in ("vllm", "openai", "hf"):
        if spec.startswith(kind + ":"):
            return kind, spec[len(kind) + 1 :]
    if spec == "default" or Path(spec).expanduser().is_dir():
        return ("vllm" if vllm_available() else "hf"), spec
    raise ValueError(
        f"unknown model spec {spec!r}: use 'default', a local directory, 'vllm:<dir|name>', "
        "'openai:<base_url>#<model>', 'hf:<dir>', 'echo' or 'instant'"
    )


def _build(
    kind: str, target: str, config: EngineConfig, role: Role, checkpoint: str | None = None
) -> ModelClient:
    if kind == "echo":
        return EchoModel()
    if kind == "instant":
        return InstantModel()
    if kind == "openai":
        base_url, _, model = target.partition("#")
        if not model:
            raise ValueError(f"openai spec needs '#<model>': {target!r}")
        from .openai_http import OpenAIChatClient

        return OpenAIChatClient(
            base_url,
            model,
            timeout_s=config.request_timeout_s,
            max_retries=config.max_retries,
            max_inflight=config.max_inflight,
        )
    path = resolve_model(target)
    if kind == "hf":
        from .hf_engine import TransformersClient

        client = TransformersClient(path, dtype=config.dtype)
        if checkpoint is not None:
            client.checkpoint = checkpoint
        return client
    from .engine_pool import VLLMRayClient

    vllm_client = VLLMRayClient(path, config)
    if checkpoint is not None:  # named before start: every replica (and a restarted one) reports it
        vllm_client.checkpoint = checkpoint
    return vllm_client.start()


def build_model(
    spec: str, *, role: Role = "root", config: EngineConfig | None = None, adapter: str | None = None
) -> ModelClient:
    """A started `ModelClient` for `spec` (see the module docstring for the forms).

    `adapter`: a peft LoRA adapter directory (merged into `spec`'s weights once, cached) or a
    full checkpoint directory to serve instead of `spec`'s weights; every call then reports the
    adapter's identity as its checkpoint (see `adapter.py`). Local engines (vllm, hf) only.

    Blocks while an engine starts. Raises ValueError for a malformed spec and ModelError when
    an engine cannot start.
    """
    config = config or EngineConfig()
    kind, target = parse_model_spec(spec)
    if kind in ("echo", "instant"):
        if adapter is not None:
            raise ValueError(f"an adapter needs a local engine (vllm or hf), not {spec!r}")
        return _build(kind, target, config, role)  # stateless doubles: never shared
    checkpoint = None
    if adapter is not None:
        if kind not in ("vllm", "hf"):
            raise ValueError(f"an adapter needs a local engine (vllm or hf), not {spec!r}")
        from .adapter import prepare_adapter

        served, checkpoint = prepare_adapter(adapter, resolve_model(target))
        target = str(served)
    key = (kind, target, config, checkpoint)
    if not config.share_engine:
        key += (role,)
    client = _SHARED.get(key)
    if client is None or getattr(client, "_closed", False):
        client = _SHARED[key] = _build(kind, target, config, role, checkpoint)
    return client


async def close_all_models() -> None:
    """Close every engine `build_model` handed out (shared or per role)."""
    clients = list(_SHARED.values())
    _SHARED.clear()
    for client in clients:
        await client.close()

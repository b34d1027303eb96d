"""`rlm-env eval --adapter`: a LoRA adapter merged once into the base and served, its identity
recorded as the checkpoint of every call; a full checkpoint served as it is.

The adapter is made here with peft on the default model, with its B matrices perturbed (peft
initialises B to zero, which would make the merged weights equal the base)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from rlm_env.models import build_model
from rlm_env.models.adapter import MERGE_INFO, adapter_sha, prepare_adapter

TARGETS = ["q_proj", "v_proj"]
pytestmark = pytest.mark.slow  # one LoRA made and merged per module: ~10 s on an idle machine


def make_adapter(base: Path, out: Path, seed: int) -> Path:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32)
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=gen) * 0.05)
    peft_model.save_pretrained(str(out))
    return out


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """Merged models go to a temporary cache (RLM_ENV_CACHE), never the user's."""
    path = tmp_path_factory.mktemp("cache")
    old = os.environ.get("RLM_ENV_CACHE")
    os.environ["RLM_ENV_CACHE"] = str(path)
    yield path
    if old is None:
        os.environ.pop("RLM_ENV_CACHE")
    else:
        os.environ["RLM_ENV_CACHE"] = old


@pytest.fixture(scope="module")
def adapter(default_model_path, tmp_path_factory):
    return make_adapter(default_model_path, tmp_path_factory.mktemp("lora") / "adapter", seed=1)


@pytest.fixture(scope="module")
def merged(adapter, default_model_path, cache):
    return prepare_adapter(adapter, default_model_path)


def test_lora_is_merged_once_and_named_by_its_bytes(adapter, merged, default_model_path, cache):
    import torch
    from safetensors.torch import load_file

    target, name = merged
    assert name == f"adapter:{adapter.resolve()}@{adapter_sha(adapter)[:12]}"
    assert target.parent == cache / "merged"
    info = json.loads((target / MERGE_INFO).read_text())
    assert info["checkpoint"] == name and info["adapter"] == str(adapter.resolve())
    for file in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "config.json"):
        assert (target / file).is_file(), file
    # the merge is W + (alpha / r) * B @ A on the targeted projections, nothing else changes
    base = load_file(str(default_model_path / "model.safetensors"))
    new = load_file(str(target / "model.safetensors"))
    lora = load_file(str(adapter / "adapter_model.safetensors"))
    prefix = "base_model.model.model.layers.0.self_attn.q_proj"
    delta = 2.0 * lora[f"{prefix}.lora_B.weight"] @ lora[f"{prefix}.lora_A.weight"]
    key = "model.layers.0.self_attn.q_proj.weight"
    want = base[key].float() + delta
    assert torch.allclose(new[key].float(), want, atol=0.02, rtol=0.02)
    assert not torch.equal(new[key], base[key])
    assert torch.equal(new["model.layers.0.mlp.up_proj.weight"], base["model.layers.0.mlp.up_proj.weight"])
    # cached: a second call reuses the merged directory
    stamp = (target / "model.safetensors").stat().st_mtime_ns
    assert prepare_adapter(adapter, default_model_path) == merged
    assert (target / "model.safetensors").stat().st_mtime_ns == stamp


def test_the_name_follows_the_adapter_bytes(adapter, tmp_path):
    import shutil

    other = tmp_path / "other"
    shutil.copytree(adapter, other)
    assert adapter_sha(other) == adapter_sha(adapter)
    config = json.loads((other / "adapter_config.json").read_text())
    (other / "adapter_config.json").write_text(json.dumps({**config, "lora_dropout": 0.5}))
    assert adapter_sha(other) != adapter_sha(adapter)


def test_full_checkpoint_is_served_as_it_is(merged, tmp_path):
    target, _ = merged
    target2, name = prepare_adapter(target, "unused-base")
    assert target2 == target and name.startswith(f"checkpoint:{target}@")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="neither a peft LoRA adapter"):
        prepare_adapter(tmp_path / "empty", "unused-base")
    with pytest.raises(ValueError, match="local engine"):
        build_model("echo", adapter=str(target))


async def test_transformers_engine_serves_the_adapter(adapter, merged, default_model_path):
    """The served weights are the merged ones (logits differ from the base), and every call
    reports the adapter's name as its checkpoint."""
    import torch

    from rlm_env.models.base import SamplingParams

    client = build_model(f"hf:{default_model_path}", adapter=str(adapter))
    try:
        assert client.model_path == str(merged[0])
        completion = await client.generate(
            [{"role": "user", "content": "Say hi."}], SamplingParams(max_tokens=3, temperature=0.0)
        )
        assert completion.checkpoint == merged[1]
        base = build_model(f"hf:{default_model_path}")
        ids = torch.tensor([client.tokenizer.encode("The capital of France is")])
        with torch.no_grad():
            diff = (client.model(ids).logits - base.model(ids).logits).abs().max().item()
        assert diff > 0.1
        await base.close()
    finally:
        await client.close()


@pytest.mark.slow
@pytest.mark.engine
def test_eval_with_adapter_on_the_real_engine(adapter, merged, default_model_path, tmp_path):
    """`rlm-env eval --adapter` on vLLM in Ray: the merged model is served and every record
    names the adapter; summary.json carries a top-level accuracy."""
    import ray

    from rlm_env.cli import main
    from rlm_env.episode import read_records

    config = tmp_path / "eval.toml"
    config.write_text(
        "[eval]\nengine = { kvcache_gb = 0.25, max_model_len = 2048 }\n"
        "[episode]\nbudget = { max_root_turns = 1, context_window = 2048 }\n"
        "root_sampling = { max_tokens = 16, temperature = 0.0 }\n"
    )
    out = tmp_path / "run"
    started_ray = not ray.is_initialized()
    try:
        code = main(
            [
                "eval",
                "--task",
                "niah",
                "--lengths",
                "1k",
                "--episodes",
                "1",
                "--model",
                str(default_model_path),
            ]
            + ["--adapter", str(adapter), "--config", str(config), "--out", str(out)]
        )
    finally:
        if started_ray and ray.is_initialized():
            ray.shutdown()
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    assert isinstance(summary["accuracy"], float) and summary["accuracy"] == summary["rows"][0]["accuracy"]
    assert summary["checkpoints"] == [merged[1]] and summary["config"]["adapter"] == str(adapter)
    (record,) = read_records(out / "trajectories.jsonl")
    roots = [c for c in record.calls if c.role == "root"]
    assert roots and not record.flags.infra_failure
    assert all(c.checkpoint == merged[1] and c.model == merged[0].name for c in roots)

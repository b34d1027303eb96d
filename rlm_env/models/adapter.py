"""Serving a trained adapter: a LoRA merged into its base once, or a full checkpoint as it is.

`rlm-env eval --model default --adapter DIR` evaluates trained weights on the same engines as
the base model. `DIR` is either

- a LoRA adapter written by peft (`adapter_config.json` + `adapter_model.safetensors`): it is
  merged into the base weights once (peft's `merge_and_unload`, in float32, saved as bf16
  safetensors with the base's tokenizer and chat template) into
  `<cache>/merged/<adapter sha>-<base sha>/`, and that directory is served; a second evaluation
  of the same adapter on the same base reuses it; or
- a full checkpoint (`config.json` + weight files): served as it is.

Either way the weights get a name that says where they came from and what they are:
"adapter:<absolute dir>@<sha12>" (the hash of the adapter's config and weight bytes) or
"checkpoint:<absolute dir>@<sha12>" (the hash of the weight files). The engine reports that name
as the `checkpoint` of every call it serves, so each record says which adapter sampled it.

Not supported: serving the adapter unmerged (vLLM's LoRA path would also work on CPU, but a
merged model runs at the base's speed and needs no LoRA-enabled engine config), adapters for
a different architecture than the base (peft refuses them when loading).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from .checkpoint import weights_identity
from .default_model import cache_root

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors", "adapter_model.bin")
MERGE_INFO = "rlm-env-merged.json"
_WEIGHT_SUFFIXES = (".safetensors", ".bin")


def is_lora_adapter(path: str | os.PathLike) -> bool:
    return (Path(path) / "adapter_config.json").is_file()


def is_full_checkpoint(path: str | os.PathLike) -> bool:
    root = Path(path)
    return (root / "config.json").is_file() and any(p.suffix in _WEIGHT_SUFFIXES for p in root.iterdir())


def adapter_sha(path: str | os.PathLike) -> str:
    """SHA-256 (hex) over the adapter's config and weight files, names included."""
    digest = hashlib.sha256()
    for name in ADAPTER_FILES:
        file = Path(path) / name
        if file.is_file():
            digest.update(name.encode() + b"\0" + file.read_bytes() + b"\0")
    return digest.hexdigest()


def prepare_adapter(
    adapter: str | os.PathLike, base: str | os.PathLike, cache_dir: str | os.PathLike | None = None
) -> tuple[Path, str]:
    """(the directory an engine should load, the checkpoint name to report for it).

    Raises ValueError when `adapter` is neither a peft LoRA adapter nor a full checkpoint."""
    path = Path(adapter).expanduser().resolve()
    if not path.is_dir():
        raise ValueError(f"--adapter {adapter}: not a directory")
    if is_lora_adapter(path):
        sha = adapter_sha(path)
        name = f"adapter:{path}@{sha[:12]}"
        base_id = weights_identity(base).split(":", 1)[1]
        target = cache_root(cache_dir) / "merged" / f"{sha[:16]}-{base_id}"
        if not (target / MERGE_INFO).is_file():
            _merge(path, Path(base), target, name)
        return target, name
    if is_full_checkpoint(path):
        sha = weights_identity(path).split(":", 1)[1]
        return path, f"checkpoint:{path}@{sha}"
    raise ValueError(
        f"--adapter {adapter}: neither a peft LoRA adapter (adapter_config.json) nor a full "
        "checkpoint (config.json and *.safetensors)"
    )


def _merge(adapter: Path, base: Path, target: Path, name: str) -> None:
    """Merge into a temporary sibling, then rename: a crash never leaves a half-written model."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    target.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".merging-", dir=target.parent))
    try:
        model = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32)
        merged = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
        merged.to(torch.bfloat16).save_pretrained(str(work))
        for file in base.iterdir():  # tokenizer, chat template, generation config
            if file.is_file() and file.suffix not in _WEIGHT_SUFFIXES and not (work / file.name).exists():
                if not file.name.startswith("rlm-env-"):
                    shutil.copy2(file, work / file.name)
        info = {"checkpoint": name, "adapter": str(adapter), "base": str(base.resolve())}
        (work / MERGE_INFO).write_text(json.dumps(info, indent=2))
        try:
            os.rename(work, target)
        except OSError:  # another process merged the same adapter first: keep theirs
            if not (target / MERGE_INFO).is_file():
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)

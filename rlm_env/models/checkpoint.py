"""Naming the weights that sampled a call, so a record says which policy produced each token.

A reload counter (`weight_version`) restarts at 0 with every process, so two runs, or one run
resumed after a crash, would both call their first weights "0". A checkpoint identity does not:
an engine starts on "base:<sha12>", a hash of its weight files' bytes (or of the sha256 list in
the default model's manifest, which already holds them), and every `reload_weights` names the
new weights (a trainer passes "run/step-12"; without a name the new files are hashed the same way).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

MANIFEST_NAME = "rlm-env-manifest.json"
_BLOCK = 1 << 22


def weights_identity(path: str | Path, prefix: str = "base") -> str:
    """ "<prefix>:<sha12>" for the weights under `path` (a directory or one file).

    Uses the sha256 values of the default model's manifest when one is present (free); else
    hashes the bytes of every *.safetensors / *.bin file (about 0.3 s for the 135M model).
    A path without weight files (a hub name, a server) gets its name hashed instead, which is
    stable but says nothing about the bytes."""
    root = Path(path)
    digest = hashlib.sha256()
    manifest = root / MANIFEST_NAME
    if manifest.is_file():
        files = json.loads(manifest.read_text()).get("files", {})
        for name in sorted(files):
            entry = files[name]
            digest.update(f"{name}\0{entry.get('sha256') if isinstance(entry, dict) else entry}\0".encode())
        return f"{prefix}:{digest.hexdigest()[:12]}"
    weight_files = (
        [root]
        if root.is_file()
        else sorted(p for p in root.glob("*") if p.suffix in (".safetensors", ".bin"))
        if root.is_dir()
        else []
    )
    if not weight_files:
        digest.update(str(path).encode())
    for file in weight_files:
        digest.update(file.name.encode() + b"\0")
        with open(file, "rb") as f:
            while block := f.read(_BLOCK):
                digest.update(block)
    return f"{prefix}:{digest.hexdigest()[:12]}"

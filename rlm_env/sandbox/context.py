"""Turning a task's context into one read-only file, written once and shared.

The context is never re-serialized per cell, and never sent through the protocol: the host
writes it once to a content-addressed file (`<sha256>.txt` or `.json`, mode 0444) in a store
directory that only the host user can enter, opens it O_RDONLY and hands the worker that single
descriptor (SCM_RIGHTS). The worker reads it, binds `context`, and closes it. The store
directory is never mounted in the sandbox, so one episode cannot find another's context, and
episodes on the same context share one file instead of one copy each. A large pure-ASCII text
(`PreparedContext.ascii`) is even shared in memory: workers map it as a str over the file's
page cache instead of decoding a private copy (16 episodes on a 40 MB context: ~40 MB, not 640).

- `str` is written as UTF-8 text and bound as str;
- `list` / `dict` are written as JSON and bound as list / dict;
- `ContextDir` becomes a JSON dict {relative path: text} of its regular files: symlinks are
  never followed (one pointing at /etc/passwd must not leak it) but skipped and listed in
  `PreparedContext.skipped`; undecodable bytes become U+FFFD;
- `ContextFile` is used in place (no copy), only hashed and measured by streaming it.

`PreparedContext` also carries the metadata the root model is shown instead of the context
itself: type, total length, per-item lengths, a short prefix.
"""

from __future__ import annotations

import codecs
import hashlib
import json
import os
import stat
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from rlm_env.tasks.base import ContextDir, ContextFile, ContextValue

ITEM_LENGTHS_CAP = 1000
_CHUNK_CHARS = 1 << 20
_CHUNK_BYTES = 1 << 22


@dataclass(frozen=True)
class PreparedContext:
    """A context on disk, ready to hand to any number of sandboxes, plus what to say about it."""

    path: Path
    kind: Literal["text", "json"]
    sha256: str
    size_bytes: int
    type_name: Literal["str", "list", "dict"]
    length: int
    """Characters for a str; items (or keys) for a list or dict."""
    item_lengths: list[int]
    """Characters of each item (list) or value (dict): a str's own length, else its JSON's.
    Only the first `ITEM_LENGTHS_CAP`; `length` says how many there are in all."""
    prefix: str
    """The first `prefix_chars` characters of the text (or of the JSON text)."""
    skipped: list[str] = field(default_factory=list)
    """ContextDir entries left out, with the reason (symlinks, special files, unreadable)."""
    ascii: bool = False
    """Text that is pure ASCII: workers map it as a str over the shared page cache (no copy)."""

    @property
    def item_lengths_truncated(self) -> bool:
        return self.type_name != "str" and len(self.item_lengths) < self.length

    def describe(self) -> dict[str, Any]:
        """The metadata a prompt can show about the context (never the context itself)."""
        return {
            "type": self.type_name,
            "length": self.length,
            "item_lengths": self.item_lengths,
            "item_lengths_truncated": self.item_lengths_truncated,
            "size_bytes": self.size_bytes,
            "prefix": self.prefix,
            "sha256": self.sha256,
        }


def default_store_dir() -> Path:
    """$XDG_RUNTIME_DIR/rlm-env-contexts, else /dev/shm/rlm-env-contexts, else the temp dir."""
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and os.path.isdir(runtime) and os.access(runtime, os.W_OK):
        return Path(runtime) / "rlm-env-contexts"
    if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK):
        return Path("/dev/shm/rlm-env-contexts")
    return Path(tempfile.gettempdir()) / "rlm-env-contexts"


def prepare_context(
    value: ContextValue, store_dir: Path | str | None = None, prefix_chars: int = 500
) -> PreparedContext:
    """Write (or reuse) the file for `value` and measure it. See the module docstring."""
    if isinstance(value, ContextFile):
        return _prepare_file(Path(value.path), value.kind, prefix_chars)
    store = Path(store_dir) if store_dir is not None else default_store_dir()
    store.mkdir(mode=0o700, parents=True, exist_ok=True)
    skipped: list[str] = []
    if isinstance(value, ContextDir):
        value = _read_dir(Path(value.path), skipped)
    if isinstance(value, str):
        path, sha, size = _store_text(store, value)
        prefix = value[:prefix_chars]
        return PreparedContext(path, "text", sha, size, "str", len(value), [], prefix, ascii=value.isascii())
    if isinstance(value, list | dict):
        text = json.dumps(value, ensure_ascii=False)
        path, sha, size = _store_text(store, text, suffix=".json")
        lengths = _item_lengths(value)
        type_name = "list" if isinstance(value, list) else "dict"
        return PreparedContext(
            path, "json", sha, size, type_name, len(value), lengths, text[:prefix_chars], skipped
        )
    raise TypeError(
        f"unsupported context type {type(value).__name__} (str, list, dict, ContextDir, ContextFile)"
    )


def _item_lengths(value: list | dict) -> list[int]:
    items = value if isinstance(value, list) else value.values()
    out = []
    for item in items:
        if len(out) >= ITEM_LENGTHS_CAP:
            break
        out.append(len(item) if isinstance(item, str) else len(json.dumps(item, ensure_ascii=False)))
    return out


def _encoded_chunks(text: str):
    for i in range(0, len(text), _CHUNK_CHARS):
        yield text[i : i + _CHUNK_CHARS].encode("utf-8", "surrogatepass")


def _store_text(store: Path, text: str, suffix: str = ".txt") -> tuple[Path, str, int]:
    """Hash in chunks; write (atomically, 0444) only if no file with that hash exists yet."""
    h, size = hashlib.sha256(), 0
    for chunk in _encoded_chunks(text):
        h.update(chunk)
        size += len(chunk)
    sha = h.hexdigest()
    path = store / f"{sha}{suffix}"
    try:
        if path.stat().st_size == size:
            return path, sha, size  # shared with every earlier episode on this context
    except FileNotFoundError:
        pass
    fd, tmp = tempfile.mkstemp(dir=store, prefix=".partial-")
    try:
        with os.fdopen(fd, "wb") as f:
            for chunk in _encoded_chunks(text):
                f.write(chunk)
        os.chmod(tmp, 0o444)
        os.replace(tmp, path)  # atomic: concurrent preparers write identical bytes
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path, sha, size


def _read_dir(root: Path, skipped: list[str]) -> dict[str, str]:
    """{relative posix path: text} of regular files under `root`, never following a symlink."""
    out: dict[str, str] = {}
    root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        _walk(root_fd, "", out, skipped)
    finally:
        os.close(root_fd)
    return dict(sorted(out.items()))


def _walk(dir_fd: int, rel: str, out: dict[str, str], skipped: list[str]) -> None:
    # Directory descriptors + O_NOFOLLOW: a path swapped for a symlink mid-walk is refused too.
    for name in sorted(os.listdir(dir_fd)):
        path = f"{rel}{name}"
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        if stat.S_ISLNK(st.st_mode):
            target = os.readlink(name, dir_fd=dir_fd)
            skipped.append(f"{path}: symlink to {target!r} not followed")
        elif stat.S_ISDIR(st.st_mode):
            sub = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=dir_fd)
            try:
                _walk(sub, path + "/", out, skipped)
            finally:
                os.close(sub)
        elif stat.S_ISREG(st.st_mode):
            try:
                fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW, dir_fd=dir_fd)
            except OSError as e:
                skipped.append(f"{path}: unreadable ({e.strerror})")
                continue
            with os.fdopen(fd, "rb") as f:
                out[path] = f.read().decode("utf-8", errors="replace")
        else:
            skipped.append(f"{path}: not a regular file")


def _prepare_file(path: Path, kind: Literal["text", "json"], prefix_chars: int) -> PreparedContext:
    """Measure a file in place: one streaming pass for text, one parse for JSON."""
    h, size = hashlib.sha256(), 0
    if kind == "text":
        decoder = codecs.getincrementaldecoder("utf-8")("replace")
        length, prefix, ascii = 0, "", True
        with open(path, "rb") as f:
            while chunk := f.read(_CHUNK_BYTES):
                h.update(chunk)
                size += len(chunk)
                ascii = ascii and chunk.isascii()
                text = decoder.decode(chunk)
                length += len(text)
                if len(prefix) < prefix_chars:
                    prefix += text[: prefix_chars - len(prefix)]
        length += len(decoder.decode(b"", final=True))
        return PreparedContext(path, "text", h.hexdigest(), size, "str", length, [], prefix, ascii=ascii)
    with open(path, "rb") as f:
        data = f.read()
    h.update(data)
    size = len(data)
    value = json.loads(data)
    prefix = data[: prefix_chars * 4].decode("utf-8", errors="ignore")[:prefix_chars]
    del data
    if not isinstance(value, list | dict):
        raise ValueError(
            f"JSON context file {path} must hold a list or an object, not {type(value).__name__}"
        )
    type_name = "list" if isinstance(value, list) else "dict"
    return PreparedContext(
        path, "json", h.hexdigest(), size, type_name, len(value), _item_lengths(value), prefix
    )

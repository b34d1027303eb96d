"""Turning a context into one read-only file, written once and shared; and what a context can be.

The context is never re-serialized per cell, and never sent through the protocol: the host
writes it once to a content-addressed file (named by the SHA-256 of its UTF-8 text, mode 0444)
in a store directory that only the host user can enter, opens it O_RDONLY and hands the worker
that single descriptor (SCM_RIGHTS). The worker reads or maps it, binds `context`, and closes
it. The store directory is never mounted in the sandbox, so one episode cannot find another's
context, and episodes on the same context share one file instead of one copy each.

What a context can be (the sandbox defines it; tasks build their contexts from these types):

- `str`, bound as str. The file holds the text in CPython's own layout for that str, which
  stores every character in 1, 2 or 4 bytes, by the widest one: pure ASCII is the UTF-8 file
  itself (`<sha>.txt`); other text is stored once as Latin-1 (`.ucs1`, every character below
  U+0100), UTF-16-LE without surrogates (`.ucs2`, the BMP) or UTF-32-LE (`.ucs4`, emoji and
  other astral characters). Workers then map a large text as a str over the file's page cache,
  instead of decoding a private copy each (16 episodes on a 10M-token context: one copy, not
  16), and a worker whose interpreter lays strs out otherwise decodes the file with the
  matching codec (`PreparedContext.char_width`). The text is the UTF-8 text decoded with
  U+FFFD for invalid bytes (a str's lone surrogates become U+FFFD too): exactly what a plain
  decode of the UTF-8 gives.
- `list` / `dict`, written as JSON and bound as list / dict (parsed per worker: not shared);
- `ContextDir(path)`, a JSON dict {relative path: text} of its regular files: symlinks are
  never followed (one pointing at /etc/passwd must not leak it) but skipped and listed in
  `PreparedContext.skipped`; undecodable bytes become U+FFFD;
- `ContextFile(path, kind)`, a file already on disk, hashed and measured by streaming it (a
  10M-token context never has to be a Python object on the host). An ASCII text or JSON file is
  used in place; any other text is written once into the store in its str layout (the next
  episode on the same file finds it by hash).

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
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

ITEM_LENGTHS_CAP = 1000
_CHUNK_CHARS = 1 << 20
_CHUNK_BYTES = 1 << 22
STR_CODECS = {1: "latin-1", 2: "utf-16-le", 4: "utf-32-le"}
"""Bytes a character -> the codec whose output is CPython's str payload at that width
(little-endian; a worker on a big-endian machine fails its layout probe and decodes instead)."""


@dataclass(frozen=True)
class ContextDir:
    """A directory of text files used as the context (delivered as {relpath: text})."""

    path: Path


@dataclass(frozen=True)
class ContextFile:
    """A context already written to disk: `kind="text"` (UTF-8) or `kind="json"`."""

    path: Path
    kind: Literal["text", "json"] = "text"


ContextValue = str | list | dict | ContextDir | ContextFile
"""Everything a sandbox can be given as its `context` (see the module docstring)."""


@dataclass(frozen=True)
class PreparedContext:
    """A context on disk, ready to hand to any number of sandboxes, plus what to say about it."""

    path: Path
    """The file handed to workers: JSON, or a str's payload at `char_width` bytes a character."""
    kind: Literal["text", "json"]
    sha256: str
    """Of the UTF-8 text (or JSON): the context's identity, whatever layout `path` holds."""
    size_bytes: int
    """Of the UTF-8 text (or JSON)."""
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
    """Text that is pure ASCII (its 1-byte payload is its UTF-8 file)."""
    char_width: Literal[1, 2, 4] | None = None
    """Text only: bytes a character in `path` (see `STR_CODECS`), CPython's width for this str."""
    file_bytes: int = 0
    """Bytes of `path`: what the workers that map it hold together, once (length x char_width)."""

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
    store = Path(store_dir) if store_dir is not None else default_store_dir()
    if isinstance(value, ContextFile):
        if value.kind == "text":
            return _prepare_text_file(Path(value.path), store, prefix_chars)
        return _prepare_json_file(Path(value.path), prefix_chars)
    skipped: list[str] = []
    if isinstance(value, ContextDir):
        value = _read_dir(Path(value.path), skipped)
    if isinstance(value, str):
        return _prepare_str(value, store, prefix_chars)
    if isinstance(value, list | dict):
        text = json.dumps(value, ensure_ascii=False)
        sha, size, _ = _hash_str(text)
        path = _store(store / f"{sha}.json", lambda: _utf8_chunks(text), size)
        lengths = _item_lengths(value)
        type_name = "list" if isinstance(value, list) else "dict"
        return PreparedContext(
            path, "json", sha, size, type_name, len(value), lengths, text[:prefix_chars], skipped,
            file_bytes=size,
        )  # fmt: skip
    raise TypeError(
        f"unsupported context type {type(value).__name__} (str, list, dict, ContextDir, ContextFile)"
    )


# ---- str contexts: CPython's layout -------------------------------------------------------------


def char_width(text: str) -> Literal[1, 2, 4]:
    """Bytes a character CPython uses for `text`: its widest character decides."""
    if text.isascii():
        return 1
    try:
        text.encode("latin-1")
        return 1
    except UnicodeEncodeError:
        pass
    # An astral character takes two UTF-16 units; lone surrogates (one unit) are 2-byte too.
    return 2 if len(text.encode("utf-16-le", "surrogatepass")) == 2 * len(text) else 4


def _pieces(text: str) -> Iterator[str]:
    for i in range(0, len(text), _CHUNK_CHARS):
        yield text[i : i + _CHUNK_CHARS]


def _utf8_chunks(text: str) -> Iterator[bytes]:
    for piece in _pieces(text):
        yield piece.encode("utf-8", "surrogatepass")


def _hash_str(text: str) -> tuple[str, int, bool]:
    """(sha256 of the UTF-8, its size, whether the text holds lone surrogates), in chunks."""
    h, size, surrogates = hashlib.sha256(), 0, False
    for piece in _pieces(text):
        try:
            chunk = piece.encode("utf-8")
        except UnicodeEncodeError:
            chunk, surrogates = piece.encode("utf-8", "surrogatepass"), True
        h.update(chunk)
        size += len(chunk)
    return h.hexdigest(), size, surrogates


def _prepare_str(value: str, store: Path, prefix_chars: int) -> PreparedContext:
    sha, size, surrogates = _hash_str(value)
    if value.isascii():
        path = _store(store / f"{sha}.txt", lambda: _utf8_chunks(value), size)
        return PreparedContext(
            path, "text", sha, size, "str", len(value), [], value[:prefix_chars],
            ascii=True, char_width=1, file_bytes=size,
        )  # fmt: skip
    if surrogates:  # what decoding the UTF-8 gives: each lone surrogate's bytes become U+FFFD
        value = value.encode("utf-8", "surrogatepass").decode("utf-8", "replace")
    found = _find_layout(store, sha)
    if found is not None:
        path, width = found
    else:
        width = max(char_width(piece) for piece in _pieces(value))
        codec = STR_CODECS[width]
        path = _store(
            store / f"{sha}.ucs{width}", lambda: (p.encode(codec) for p in _pieces(value)), len(value) * width
        )
    return PreparedContext(
        path, "text", sha, size, "str", len(value), [], value[:prefix_chars],
        char_width=width, file_bytes=len(value) * width,
    )  # fmt: skip


def _store(path: Path, chunks: Callable[[], Iterable[bytes]], size: int) -> Path:
    """Write `chunks()` to `path` (atomically, 0444) unless a file of that size is there already."""
    try:
        if path.stat().st_size == size:
            return path  # shared with every earlier episode on this context
    except FileNotFoundError:
        pass
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".partial-")
    try:
        with os.fdopen(fd, "wb") as f:
            for chunk in chunks():
                f.write(chunk)
            written = f.tell()
        if written != size:  # a ContextFile changed between its passes
            raise RuntimeError(f"context changed while it was stored ({written} bytes, expected {size})")
        os.chmod(tmp, 0o444)
        os.replace(tmp, path)  # atomic: concurrent preparers write identical bytes
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _find_layout(store: Path, sha: str) -> tuple[Path, Literal[1, 2, 4]] | None:
    """The str layout file an earlier episode stored for this text, and its width, if any."""
    for width in (1, 2, 4):
        path = store / f"{sha}.ucs{width}"
        try:
            if path.stat().st_size % width == 0:
                return path, width
        except FileNotFoundError:
            pass
    return None


def _decoded(path: Path) -> Iterator[str]:
    """The UTF-8 file's text in pieces (U+FFFD for invalid bytes), never all at once."""
    decoder = codecs.getincrementaldecoder("utf-8")("replace")
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK_BYTES):
            yield decoder.decode(chunk)
    yield decoder.decode(b"", final=True)


def _prepare_text_file(path: Path, store: Path, prefix_chars: int) -> PreparedContext:
    """Hash a UTF-8 file in one streaming pass; if it is not ASCII, store its str layout once."""
    h, size, ascii = hashlib.sha256(), 0, True
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK_BYTES):
            h.update(chunk)
            size += len(chunk)
            ascii = ascii and chunk.isascii()
        f.seek(0)
        head = f.read(prefix_chars * 4)
    sha = h.hexdigest()
    prefix = codecs.getincrementaldecoder("utf-8")("replace").decode(head)[:prefix_chars]
    if ascii:  # its UTF-8 is its 1-byte payload: used in place
        return PreparedContext(
            path, "text", sha, size, "str", size, [], prefix, ascii=True, char_width=1, file_bytes=size
        )
    found = _find_layout(store, sha)
    if found is not None:
        cached, width = found
        n = cached.stat().st_size
        return PreparedContext(
            cached, "text", sha, size, "str", n // width, [], prefix, char_width=width, file_bytes=n
        )
    width, length = 1, 0
    for piece in _decoded(path):  # first pass: the widest character and the length
        width, length = max(width, char_width(piece)), length + len(piece)
    codec = STR_CODECS[width]
    out = _store(
        store / f"{sha}.ucs{width}", lambda: (p.encode(codec) for p in _decoded(path)), length * width
    )
    return PreparedContext(
        out, "text", sha, size, "str", length, [], prefix, char_width=width, file_bytes=length * width
    )


# ---- JSON contexts and directories ------------------------------------------------------------


def _item_lengths(value: list | dict) -> list[int]:
    items = value if isinstance(value, list) else value.values()
    out = []
    for item in items:
        if len(out) >= ITEM_LENGTHS_CAP:
            break
        out.append(len(item) if isinstance(item, str) else len(json.dumps(item, ensure_ascii=False)))
    return out


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


def _prepare_json_file(path: Path, prefix_chars: int) -> PreparedContext:
    """Measure a JSON file in place: one parse (its list or dict is bound per worker)."""
    h = hashlib.sha256()
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
        path, "json", h.hexdigest(), size, type_name, len(value), _item_lengths(value), prefix,
        file_bytes=size,
    )  # fmt: skip

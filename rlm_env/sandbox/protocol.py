"""The host's side of the wire: length-prefixed JSON frames, a size cap, and fd passing.

A frame is a 4-byte big-endian length followed by that many bytes of UTF-8 JSON encoding one
object with a string "op". That is the whole grammar, and the host parses it with `json.loads`
only: nothing from the worker is ever unpickled, unmarshalled, evaluated or imported, so a frame
can at worst be rejected. Anything else (a length over the cap, more JSON items than `MAX_FRAME_ITEMS`, bytes that are
not UTF-8 JSON, a non-object, a missing op, a reply to a question not asked, a field of the wrong
type or out of bounds: see frames.py) is a `SandboxProtocolError`: the host
kills that worker and restarts it, and the observation says so. It is the model's code that
wrote the frame, so it is the model's fault, not an infrastructure failure.

The worker is untrusted, so strings it sends are also cleaned of lone surrogates (which would
crash a later UTF-8 encode) and re-truncated to the configured output size.
"""

from __future__ import annotations

import array
import asyncio
import json
import re
import socket
import struct
from typing import Any

HEADER = struct.Struct(">I")
MAX_FRAME_BYTES = 64 * 1024 * 1024
"""Largest frame accepted from a worker; a longer announced length is a protocol violation."""
MAX_FRAME_ITEMS = 600_000
"""Most JSON items (raw `,`, `[` and `{` bytes) one frame may hold: a 1 MB answer of small
items fits; what json.loads builds from a frame stays within ~50 MB (see frames.py)."""
_PARSE_IN_THREAD_BYTES = 1 << 20
_CHUNK = 1 << 20


class SandboxProtocolError(Exception):
    """The worker sent something that is not a well-formed frame of the protocol.

    It is the model's code that wrote it, so it is the model's violation, never infrastructure:
    the host kills and restarts the worker and says so in the cell's observation."""


ProtocolViolation = SandboxProtocolError  # the name used inside the sandbox package


class WorkerDied(Exception):
    """The worker's end of the socket closed (it exited or was killed)."""


def encode_frame(msg: dict[str, Any]) -> bytes:
    """One frame. ASCII-only JSON, so no str the host holds can fail to encode."""
    data = json.dumps(msg, ensure_ascii=True).encode("ascii")
    return HEADER.pack(len(data)) + data


def decode_payload(payload: bytes) -> dict[str, Any]:
    """Parse one frame body or raise ProtocolViolation (never anything else)."""
    try:
        msg = json.loads(payload.decode("utf-8"))
    except Exception as e:  # UnicodeDecodeError, JSONDecodeError, RecursionError, ValueError
        head = payload[:40]
        raise ProtocolViolation(
            f"a frame from the worker is not UTF-8 JSON ({type(e).__name__}; starts {head!r})"
        ) from None
    if not isinstance(msg, dict) or not isinstance(msg.get("op"), str):
        raise ProtocolViolation("a frame from the worker is not a JSON object with a string 'op'")
    return msg


def count_items(chunk: bytes) -> int:
    """An upper bound on the JSON values `chunk` can add: its raw `,`, `[` and `{` bytes."""
    return chunk.count(b",") + chunk.count(b"[") + chunk.count(b"{")


_OP_PREFIX = re.compile(rb'\{\s*"op"\s*:\s*"([a-z_]{1,32})"')


async def read_frame(
    reader: asyncio.StreamReader,
    max_bytes: int = MAX_FRAME_BYTES,
    max_items: int = MAX_FRAME_ITEMS,
    op_max_bytes: dict[str, int] | None = None,
) -> dict[str, Any]:
    """Read and parse one frame, refusing it by size and item count before any parsing; big
    ones are parsed off the event loop.

    With `op_max_bytes`, a frame must begin with its op (`{"op": "result", ...`: the worker
    always writes it first) and is held to that op's own size limit before the rest is read:
    a reply frame cannot be 50 MB when its largest honest form is a few."""
    try:
        header = await reader.readexactly(HEADER.size)
        (n,) = HEADER.unpack(header)
        if n > max_bytes:
            raise ProtocolViolation(f"the worker announced a {n:,}-byte frame (limit {max_bytes:,})")
        chunks, items, left = [], 0, n
        while left:
            chunk = await reader.readexactly(min(left, _CHUNK))
            if op_max_bytes is not None and not chunks:
                m = _OP_PREFIX.match(chunk)
                if m is None:
                    raise ProtocolViolation("a frame from the worker does not begin with its op")
                op = m.group(1).decode()
                limit = op_max_bytes.get(op, max_bytes)
                if n > limit:
                    raise ProtocolViolation(f"the worker sent a {n:,}-byte {op!r} frame (limit {limit:,})")
            left -= len(chunk)
            items += count_items(chunk)
            if items > max_items:
                raise ProtocolViolation(
                    f"a frame from the worker holds over {max_items:,} JSON items (refused unparsed)"
                )
            chunks.append(chunk)
        payload = b"".join(chunks)
        del chunks
    except asyncio.IncompleteReadError:
        raise WorkerDied("the worker closed its end of the socket") from None
    except ConnectionError as e:
        raise WorkerDied(f"the worker's socket failed ({e})") from None
    if n > _PARSE_IN_THREAD_BYTES:
        return await asyncio.to_thread(decode_payload, payload)
    return decode_payload(payload)


def send_with_fd(sock: socket.socket, frame: bytes, fd: int | list[int]) -> None:
    """Send one small frame with `fd` attached (SCM_RIGHTS) on a socket asyncio also uses.

    Only ever called while nothing else is queued on the socket (right after the hello), so a
    plain sendmsg on the non-blocking socket goes out whole.
    """
    fds = array.array("i", fd if isinstance(fd, list) else [fd])
    sent = sock.sendmsg([frame], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds.tobytes())])
    if sent != len(frame):  # pragma: no cover - a tiny frame on an empty socket buffer
        sock.sendall(frame[sent:])


def clean_text(value: Any, limit: int | None = None) -> str:
    """A str safe to log and encode: lone surrogates replaced, optionally cut to `limit`."""
    text = value if isinstance(value, str) else str(value)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = text.encode("utf-8", "replace").decode("utf-8")
    if limit is not None and len(text) > limit:
        text = text[:limit]
    return text


def cut_marker(n: int) -> str:
    """The marker standing where the middle of a long output was cut."""
    return f"\n... [{n:,} characters cut] ...\n"


def truncate_middle(text: str, limit: int) -> tuple[str, int]:
    """(text, characters cut): keep the head and tail halves of `limit`, mark the cut middle."""
    if len(text) <= limit:
        return text, 0
    head = limit // 2
    tail = limit - head
    cut = len(text) - limit
    return text[:head] + cut_marker(cut) + (text[-tail:] if tail else ""), cut

"""What a worker may say, field by field: every frame the host reads is checked here first.

The worker runs the model's code, so every frame it sends may be forged: a `result` whose
`duration_s` is 10**400 (an OverflowError in the host, once recorded as an infrastructure
failure), NaN, a negative count, a str where a bool belongs, a 50 MB string, keys nobody asked
for. Each frame kind has a frozen pydantic model with strict types, finite bounded numbers,
bounded strings and no unknown keys; anything else is a `SandboxProtocolError` (the model's
protocol violation: the worker is killed and restarted, and the cell's observation says why).
Never an infrastructure failure.

Two checks happen before any JSON is parsed (protocol.read_frame), because parsing is where the
host's memory and event loop are spent: the frame's length (`MAX_FRAME_BYTES`) and its number of
JSON items. Each JSON value after the first in a container is preceded by a raw `,`, and each
container opens with a raw `[` or `{`, so those three bytes bound the number of objects that
`json.loads` can build. The honest worker writes those characters inside strings as \\u escapes
(worker_io.Channel.encode), so only a forged frame can carry more items than the limit, and it
is refused after reading at most one chunk past the limit: a 64 MB `[{}, {}, ...]` frame costs
about 2 MB of host memory, not 1.7 GB. A reply frame (`result`, `lookup`, `vars`) must also
begin with its op and is held to that op's size cap (a few MB) before its body is read.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from rlm_env.sandbox.protocol import SandboxProtocolError, clean_text

_INT_MAX = 2**53
_STRICT = ConfigDict(frozen=True, extra="forbid", strict=True)


class _Frame(BaseModel):
    model_config = _STRICT
    id: int = Field(ge=0, le=_INT_MAX)


class AnswerFrame(BaseModel):
    """The answer as the worker reports it after a cell."""

    model_config = _STRICT
    ready: bool
    content: Any = None
    via: Literal["FINAL", "FINAL_VAR", "answer_dict"] | None = None
    error: str | None = Field(default=None, max_length=4000)


class ResultFrame(_Frame):
    """The reply to `exec`."""

    op: Literal["result"]
    output: str = Field(max_length=4_000_000)
    error: str | None = Field(max_length=100_000)
    truncated: bool
    chars_cut: int = Field(ge=0, le=_INT_MAX)
    timed_out: bool
    duration_s: float = Field(ge=0.0, le=10_000_000.0, allow_inf_nan=False)
    answer: AnswerFrame


class LookupFrame(_Frame):
    """The reply to `lookup`: a variable's value as JSON (or its str), within the answer cap."""

    op: Literal["lookup"]
    found: bool
    value: Any = None
    error: str | None = Field(default=None, max_length=4000)


class VarsFrame(_Frame):
    """The reply to `vars`: {name: type name}."""

    op: Literal["vars"]
    vars: dict[str, str] = Field(max_length=100_000)


class CallFrame(_Frame):
    """A sub-call request; its arguments are checked by calls.validate_call (a bad argument is
    the REPL's SubCallError, not a violation)."""

    op: Literal["call"]
    fn: str = Field(max_length=100)
    args: dict[str, Any]


_REPLIES: dict[str, type[_Frame]] = {"result": ResultFrame, "lookup": LookupFrame, "vars": VarsFrame}


def parse_frame(msg: dict[str, Any], kind: type[BaseModel]) -> Any:
    """`kind` built from a decoded frame, or SandboxProtocolError naming the first bad field."""
    try:
        return kind.model_validate(msg)
    except ValidationError as e:
        err = e.errors(include_url=False, include_input=False)[0]
        where = ".".join(str(p) for p in err.get("loc", ())) or "frame"
        raise SandboxProtocolError(
            f"the worker sent a malformed {clean_text(msg.get('op'), 30)!r} frame ({where}: "
            f"{clean_text(err.get('msg', ''), 200)})"
        ) from None


def reply_model(op: str) -> type[_Frame]:
    """The model checking replies of kind `op` ("result", "lookup" or "vars")."""
    return _REPLIES[op]


def answer_bytes(value: Any) -> int:
    """The size the worker's `serialize` measured: UTF-8 bytes of a str, else of its JSON."""
    if isinstance(value, str):
        return len(value.encode("utf-8", "replace"))
    return len(json.dumps(value, ensure_ascii=False).encode("utf-8", "replace"))


def check_answer_size(value: Any, cap: int, what: str) -> None:
    """Refuse an answer or looked-up value over `cap` bytes (the worker checks first; only a
    forged frame fails here)."""
    size = answer_bytes(value)
    if size > cap + 16:
        raise SandboxProtocolError(f"the worker sent a {size:,}-byte {what} (the cap is {cap:,} bytes)")


__all__ = [
    "AnswerFrame",
    "CallFrame",
    "LookupFrame",
    "ResultFrame",
    "VarsFrame",
    "answer_bytes",
    "check_answer_size",
    "parse_frame",
    "reply_model",
]

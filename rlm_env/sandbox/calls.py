"""Routing the REPL's sub-calls to the host's handler.

The only way anything inside the sandbox reaches a model is a `call` frame, and every `call`
frame, whether it came from the real `llm_query` stub or was forged by code that wrote to the
socket itself, goes through `serve_call`: validated here, then given to the handler, which sees
every request and owns the budgets. Bad arguments never reach the handler; they come back to
the REPL as `SubCallError`, like a handler's own exception does.

Limits are checked before the handler runs, so no request makes the host work for nothing: an
`llm_batch` may carry at most `SandboxConfig.max_batch_prompts` prompts (the frame's item count
was bounded before it was even parsed, see frames.py), and if the handler has a
`sub_calls_left()` method, a batch asking for more sub-calls than it returns is refused at once,
before any prompt is looked at. (`SubCallRouter` can offer that method to charge the budget
before the work.)

Argument shapes (the handler receives exactly these):
  llm_query / rlm_query: {"prompt": str, "sampling": dict[str, JSON]}
  llm_batch:             {"prompts": list[str], "sampling": dict[str, JSON]}
  tool:                  {"name": str, "args": list[JSON], "kwargs": dict[str, JSON]}
A `tool` call names a custom tool; which names exist, and every limit on them, is the handler's
business (the sandbox runs nothing itself): an unknown name is refused there, like a bad prompt.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

from rlm_env.sandbox.frames import CallFrame, parse_frame
from rlm_env.sandbox.protocol import clean_text

SUBCALL_FUNCTIONS = ("llm_query", "llm_batch", "rlm_query", "tool")
_ARG = {"llm_query": "prompt", "rlm_query": "prompt", "llm_batch": "prompts"}


class SubCallArgumentError(ValueError):
    """A sub-call's arguments are malformed (the REPL sees it as SubCallError)."""


def _type(v: Any) -> str:
    return type(v).__name__


def validate_call(
    frame: dict[str, Any], max_batch: int | None = None, calls_left: int | None = None
) -> tuple[str, dict[str, Any]]:
    """(fn, args) in the shapes above, or SubCallArgumentError naming what is wrong.

    `max_batch`: most prompts in one llm_batch; `calls_left`: sub-calls the handler would still
    accept. Both are checked on the count alone, before any prompt."""
    fn = frame.get("fn")
    if fn == "tool":
        return fn, _validate_tool(frame.get("args"))
    if fn not in _ARG:
        raise SubCallArgumentError(f"unknown sub-call function {clean_text(fn, 50)!r}")
    args = frame.get("args")
    if not isinstance(args, dict):
        raise SubCallArgumentError(f"{fn}: arguments must be an object, got {_type(args)}")
    name = _ARG[fn]
    extra = sorted(set(args) - {name, "sampling"})
    if extra:
        raise SubCallArgumentError(f"{fn}: unexpected arguments {', '.join(map(repr, extra))}")
    if name not in args:
        raise SubCallArgumentError(f"{fn}: missing argument {name!r}")
    value = args[name]
    if name == "prompt" and not isinstance(value, str):
        raise SubCallArgumentError(f"{fn}: prompt must be a str, got {_type(value)}")
    if name == "prompts":
        if not isinstance(value, list):
            raise SubCallArgumentError(f"{fn}: prompts must be a list of str, got {_type(value)}")
        if max_batch is not None and len(value) > max_batch:
            raise SubCallArgumentError(f"{fn}: {len(value):,} prompts; at most {max_batch:,} per call")
        if calls_left is not None and len(value) > calls_left:
            raise SubCallArgumentError(
                f"{fn}: sub-call budget: {len(value):,} prompts asked for, {max(calls_left, 0):,} "
                "sub-calls left"
            )
        for i, p in enumerate(value):
            if not isinstance(p, str):
                raise SubCallArgumentError(f"{fn}: prompts[{i}] must be a str, got {_type(p)}")
    sampling = args.get("sampling", {})
    if not isinstance(sampling, dict):
        raise SubCallArgumentError(f"{fn}: sampling options must be keyword arguments, got {_type(sampling)}")
    return fn, {name: value, "sampling": dict(sampling)}


def _validate_tool(args: Any) -> dict[str, Any]:
    if not isinstance(args, dict) or set(args) != {"name", "args", "kwargs"}:
        raise SubCallArgumentError("tool: a call must carry exactly name, args and kwargs")
    name, pos, kw = args["name"], args["args"], args["kwargs"]
    if not isinstance(name, str) or not name.isidentifier() or len(name) > 100:
        raise SubCallArgumentError(f"tool: {clean_text(name, 50)!r} is not a tool name")
    if not isinstance(pos, list) or not isinstance(kw, dict):
        raise SubCallArgumentError(f"{name}: positional arguments must be a list, keywords an object")
    return {"name": name, "args": pos, "kwargs": kw}


def _calls_left(handler: Any) -> int | None:
    probe = getattr(handler, "sub_calls_left", None)
    if not callable(probe):
        return None
    try:
        left = probe()
    except Exception:  # noqa: BLE001 - an optional hint; the handler still checks its budget
        return None
    return left if isinstance(left, int) else None


async def serve_call(
    worker: Any,
    frame: dict[str, Any],
    handler: Callable[[str, dict[str, Any]], Awaitable[Any]] | None,
    max_batch: int | None = None,
) -> None:
    """Answer one `call` frame on `worker` with the handler's value or an error message."""
    call_id = parse_frame(frame, CallFrame).id  # a malformed call frame is a protocol violation
    try:
        fn, args = validate_call(
            frame, max_batch, _calls_left(handler) if frame.get("fn") == "llm_batch" else None
        )
        if fn == "llm_batch" and not args["prompts"]:
            value: Any = []
        elif handler is None:
            raise SubCallArgumentError(f"{fn}: sub-calls are not available in this sandbox")
        else:
            value = await handler(fn, args)
        json.dumps(value)  # must be able to travel back
        reply = {"op": "call_result", "id": call_id, "ok": True, "value": value}
    except SubCallArgumentError as e:
        reply = {"op": "call_result", "id": call_id, "ok": False, "error": clean_text(e, 2000)}
    except Exception as e:  # the handler's failure is the REPL's SubCallError, not the host's
        msg = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
        reply = {"op": "call_result", "id": call_id, "ok": False, "error": clean_text(msg, 2000)}
    await worker.send(reply)

"""Routing the REPL's sub-calls to the host's handler.

The only way anything inside the sandbox reaches a model is a `call` frame, and every `call`
frame, whether it came from the real `llm_query` stub or was forged by code that wrote to the
socket itself, goes through `serve_call`: validated here, then given to the handler, which sees
every request and owns the budgets. Bad arguments never reach the handler; they come back to
the REPL as `SubCallError`, like a handler's own exception does.

Argument shapes (the handler receives exactly these):
  llm_query / rlm_query: {"prompt": str, "sampling": dict[str, JSON]}
  llm_batch:             {"prompts": list[str], "sampling": dict[str, JSON]}
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

from rlm_env.sandbox.protocol import ProtocolViolation, clean_text

SUBCALL_FUNCTIONS = ("llm_query", "llm_batch", "rlm_query")
_ARG = {"llm_query": "prompt", "rlm_query": "prompt", "llm_batch": "prompts"}


class SubCallArgumentError(ValueError):
    """A sub-call's arguments are malformed (the REPL sees it as SubCallError)."""


def _type(v: Any) -> str:
    return type(v).__name__


def validate_call(frame: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """(fn, args) in the shapes above, or SubCallArgumentError naming what is wrong."""
    fn = frame.get("fn")
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
        for i, p in enumerate(value):
            if not isinstance(p, str):
                raise SubCallArgumentError(f"{fn}: prompts[{i}] must be a str, got {_type(p)}")
    sampling = args.get("sampling", {})
    if not isinstance(sampling, dict):
        raise SubCallArgumentError(f"{fn}: sampling options must be keyword arguments, got {_type(sampling)}")
    return fn, {name: value, "sampling": dict(sampling)}


async def serve_call(
    worker: Any, frame: dict[str, Any], handler: Callable[[str, dict[str, Any]], Awaitable[Any]] | None
) -> None:
    """Answer one `call` frame on `worker` with the handler's value or an error message."""
    call_id = frame.get("id")
    if type(call_id) is not int:
        raise ProtocolViolation("a call frame without an integer id")
    try:
        fn, args = validate_call(frame)
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

"""Worker-side extras: top-level `await` in cells, async sub-call stubs, host-bound variables.

Loaded by the launcher as the module `rlm_worker_extras` (between `worker_io.py` and
`worker.py`); standard library only, like them, and like them a convenience, never a security
boundary: everything it sends is a frame the host checks.

- `run_code`: a cell is compiled with `ast.PyCF_ALLOW_TOP_LEVEL_AWAIT`; a cell that awaits
  compiles to a coroutine, which runs to completion on a fresh event loop (one per such cell,
  closed after it: nothing scheduled in one cell runs between cells). Cells without `await`
  run exactly as before.
- `llm_query_async` / `llm_batch_async` / `rlm_query_async`: awaitable versions of the stubs.
  Each call is handed, in the order the code issues it, to ONE sender thread that runs the
  blocking stub, so the cell's own code (and its other awaits) run while the host serves it.
  Guaranteed: every call is still one `call` frame the host validates, budgets and records;
  calls leave in issue order, so their ids and record entries follow that order. Not
  guaranteed: two single async calls do not overlap each other (the socket carries one
  exchange at a time); for parallel prompts use `llm_batch_async`, whose prompts the host
  runs concurrently under the budget's `max_concurrent_sub_calls`. As for a thread blocked
  in a sync sub-call, the cell's clock is paused while a sub-call is being served.
- `load_context`: the context file descriptors the host passed at start-up (one per input:
  `context`, then `context_1` ...), each read, or mapped as a str over the shared page cache.
- `bind`: the host's `bind` request sets one variable (a JSON value, e.g. a conversation's
  `history_N`) and can clear the answer state, so the next question starts unanswered.
"""

import ast
import asyncio
import concurrent.futures
import inspect
import json
import mmap
import os
import sys

from rlm_worker_io import STR_CODECS, map_str

_SENDER = []  # the one sender thread's executor, made on first use


def _sender():
    if not _SENDER:
        _SENDER.append(concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="rlm-subcall"))
    return _SENDER[0]


def make_async(name, blocking):
    """An `async def name(...)` that runs `blocking(...)` on the sender thread, in issue order."""

    async def stub(*args, **kwargs):
        future = _sender().submit(blocking, *args, **kwargs)  # queued now: issue order is kept
        return await asyncio.wrap_future(future)

    stub.__name__ = stub.__qualname__ = name
    stub.__doc__ = f"Awaitable {blocking.__name__}: `await {name}(...)`; see {blocking.__name__}."
    return stub


FLAGS = ast.PyCF_ALLOW_TOP_LEVEL_AWAIT


def _run(code, ns):
    """eval `code` in `ns`; a code object that awaits gives a coroutine: run it to the end."""
    value = eval(code, ns)
    if inspect.CO_COROUTINE & code.co_flags:
        loop = asyncio.new_event_loop()
        try:
            value = loop.run_until_complete(value)
        finally:
            loop.close()
    return value


def run_code(tree, last, filename, ns):
    """Run a parsed cell (its body, then its last expression if any); return that value."""
    _run(compile(tree, filename, "exec", flags=FLAGS), ns)
    if last is None:
        return None
    return _run(compile(last, filename, "eval", flags=FLAGS), ns)


def bind(msg, ns, reserved, answer, answer_dict):
    """Serve a host `bind` request; answered like a lookup of the bound name."""
    name = msg.get("name")
    if not isinstance(name, str) or not name.isidentifier() or name in reserved:
        return {"op": "lookup", "found": False, "value": None, "error": "bad variable name"}
    ns[name] = msg.get("value")
    if msg.get("reset_answer") is True:
        answer.update(ready=False, content=None, via=None, error=None)
        ns["answer"] = answer_dict()
    return {"op": "lookup", "found": True, "value": None, "error": None}


# ---- contexts --------------------------------------------------------------------------------

MAP_MIN_BYTES = 1 << 16
"""Smaller texts are decoded: a private copy costs little, a mapping at least two pages."""


def load_context(msg, fds):
    """([context, context_1, ...], whether any is mapped): one per descriptor, described by
    `msg` and `msg["more"]`. Every descriptor is closed, whatever happens."""
    try:
        specs = [msg, *(msg.get("more") or [])]
        if len(fds) != len(specs):
            raise RuntimeError(f"{len(fds)} context file descriptors received, {len(specs)} expected")
        loaded = [load_one(spec, fd) for spec, fd in zip(specs, fds, strict=True)]
        return [value for value, _ in loaded], any(shared for _, shared in loaded)
    finally:
        for fd in fds:  # nothing of the file stays reachable from user code
            os.close(fd)


def load_one(spec, fd):
    """(value, mapped) for one context descriptor."""
    size = os.fstat(fd).st_size
    if spec.get("kind") == "text":
        return load_text(fd, size, spec.get("width", 1), spec.get("ascii") is True)
    with os.fdopen(os.dup(fd), "rb") as f:
        return json.loads(f.read()), False


def load_text(fd, size, width, ascii):
    """The str whose CPython payload (`width` bytes a character) is the file: mapped, or decoded."""
    codec = STR_CODECS.get(width)
    if codec is None or size % width:
        raise RuntimeError(f"the context file is not a str layout ({size} bytes, width {width!r})")
    if size == 0:
        return "", False
    if size >= MAP_MIN_BYTES:
        shared = map_str(fd, size, width, ascii)  # shares the page cache with other episodes
        if shared is not None:
            return shared, True
        print(
            f"[rlm worker] str layout probe failed: decoding a private copy ({size:,} bytes)", file=sys.stderr
        )
    with mmap.mmap(fd, size, prot=mmap.PROT_READ) as mm:
        return str(mm, codec, "surrogatepass"), False

"""The REPL worker: the only code that runs inside the sandbox.

The host starts it as `python -s -S -P -B -c <bootstrap> <worker_io> <worker_extras> <this> <config>`:
the bootstrap loads `worker_io.py` as the module `rlm_worker_io` and `worker_extras.py` as
`rlm_worker_extras`, then runs this file. All three import nothing but the standard library, never the `rlm_env` package (not visible inside). Its life:

1. apply rlimits, then (when started as root) drop to the sandbox's own unprivileged uid, so no
   user code ever runs with privileges; say hello;
2. wait for the context: an `init` frame carrying an O_RDONLY file descriptor (SCM_RIGHTS; one
   per input when a task has several: bound as context_0 ... context_N, `context` the first); read
   it (JSON via json.loads; text is in CPython's str layout at the frame's `width` bytes a
   character: a large one is mapped as a str over the shared page cache (worker_extras), else
   decoded with the matching codec), close the descriptor, bind `context`;
3. serve host requests one at a time: run a cell (top-level `await` allowed), look up a
   variable, list variables, bind a variable the host sends (a conversation's history_N).

Frames are 4-byte big-endian lengths followed by JSON. Sub-call stubs (`llm_query` & co.) send
a `call` frame and block for the reply under one lock, with the cell's timer paused. The host
trusts nothing this process says: everything here is a convenience, not a security boundary.
"""

import ast
import json
import linecache
import os
import resource
import sys
import threading
import time
import traceback

from rlm_worker_extras import bind, load_context, make_async, run_code
from rlm_worker_io import (
    Capture,
    CellTimeout,
    Channel,
    Timer,
    clean,
    die_with_parent,
    exit_when_host_goes,
    install_seccomp,
)
from rlm_worker_tools import HELPER_NAMES, ToolError, make_stubs

# The async helpers (worker_extras) are REPL helpers too: SHOW_VARS hides them, `bind` keeps them.
HELPER_NAMES.update(("llm_query_async", "llm_batch_async", "rlm_query_async"))
CFG = json.loads(sys.argv[-1])
CHAN = Channel(CFG["fd"])
TIMER = Timer(CFG["cell_timeout"])
CAPTURE = Capture(CFG["max_output_chars"])
IO_LOCK = threading.Lock()  # one frame exchange at a time, whichever thread asks
NS = {}  # the user's namespace: a fresh __main__ module's dict, once the context is loaded
ANSWER = {"ready": False, "content": None, "via": None, "error": None}
MISSING = object()
CELL = {"n": 0, "final_this_cell": False, "checked": MISSING}


class SubCallError(Exception):
    """A sub-call (llm_query, llm_batch, rlm_query) failed on the host side."""


# ---- the REPL's helpers ----------------------------------------------------------------------

SEQ = [0]


def _call(fn, args):
    with IO_LOCK:
        SEQ[0] += 1
        call_id = SEQ[0]
        try:
            frame = CHAN.encode({"op": "call", "id": call_id, "fn": fn, "args": args})
        except (TypeError, ValueError, RecursionError) as e:
            raise SubCallError(f"{fn}: arguments must be JSON-serializable ({e})") from None
        prev = TIMER.pause()
        try:
            CHAN.send_raw(frame)
            reply = CHAN.recv()
        finally:
            TIMER.resume(prev)
    if not isinstance(reply, dict) or reply.get("op") != "call_result" or reply.get("id") != call_id:
        raise SubCallError(f"{fn}: the host sent an unexpected reply")
    if reply.get("ok"):
        return reply.get("value")
    raise SubCallError(str(reply.get("error")))


def llm_query(prompt, **sampling):
    """Ask a sub-model one prompt; returns its reply text."""
    return _call("llm_query", {"prompt": prompt, "sampling": sampling})


def llm_batch(prompts, **sampling):
    """Ask a sub-model many prompts concurrently; returns the replies in the same order."""
    if isinstance(prompts, tuple):
        prompts = list(prompts)
    if isinstance(prompts, list) and len(prompts) > CFG.get("max_batch", 1 << 62):  # the host refuses more
        raise SubCallError(f"llm_batch: {len(prompts):,} prompts; at most {CFG['max_batch']:,} per call")
    return _call("llm_batch", {"prompts": prompts, "sampling": sampling})


def rlm_query(prompt, **sampling):
    """Ask a child RLM (its own REPL) one prompt; returns its final answer text."""
    return _call("rlm_query", {"prompt": prompt, "sampling": sampling})


def serialize(value):
    """(json_value, None) if it encodes within the cap, else (str(value), None), else (None, error)."""
    cap = CFG["answer_max_bytes"]
    try:
        size, parts = 0, []
        for chunk in json.JSONEncoder(ensure_ascii=False, allow_nan=False).iterencode(value):
            size += len(chunk)
            if size > cap:
                break
            parts.append(chunk)
        else:
            text = clean("".join(parts))
            if len(text.encode("utf-8")) <= cap:
                return json.loads(text), None
    except Exception:  # not JSON-able (CellTimeout, a BaseException, still propagates)
        pass
    try:
        text = str(value)
        if not isinstance(text, str):
            raise TypeError("__str__ returned a non-string")
    except CellTimeout:
        raise
    except BaseException as e:  # noqa: B036 - user __str__ may raise anything
        return None, f"str() of the answer raised {type(e).__name__}: {clean(str(e))[:300]}"
    if len(text) > cap or len(clean(text).encode("utf-8")) > cap:
        return None, f"the answer is too large ({len(text):,} characters; limit {cap:,} bytes)"
    return clean(text), None


def _set_answer(value, via):
    content, err = serialize(value)
    CELL["final_this_cell"] = True
    ANSWER.update(ready=err is None, content=content, via=via, error=err)
    if err:
        print(f"[{via}] answer not accepted: {err}", file=sys.stderr)


def FINAL(value):
    """Submit `value` as the final answer (JSON if possible, else its str)."""
    _set_answer(value, "FINAL")


def FINAL_VAR(name):
    """Submit the REPL variable called `name` as the final answer."""
    if not isinstance(name, str):
        raise TypeError(f"FINAL_VAR expects a variable name (str), got {type(name).__name__}")
    name = name.strip().strip("'\"")
    if name not in NS:
        raise NameError(f"FINAL_VAR: no variable named {name!r} in the REPL")
    _set_answer(NS[name], "FINAL_VAR")


def SHOW_VARS():
    """The user's variables and their type names (helpers, modules and _private names left out)."""
    return {
        k: type(v).__name__
        for k, v in list(NS.items())
        if not k.startswith("_") and k not in HELPER_NAMES and not isinstance(v, type(sys))
    }


def _check_answer_dict():
    d = NS.get("answer")
    if CELL["final_this_cell"] or type(d) is not dict or d.get("ready") is not True:
        CELL["checked"] = MISSING
        return
    content = d.get("content", MISSING)
    if content is not MISSING and content is CELL["checked"]:
        return  # this very object was judged already (and reported); judge it again once it changes
    CELL["checked"] = content
    if content is MISSING:
        ANSWER.update(ready=False, content=None, via="answer_dict", error='answer["content"] is not set')
        return
    _set_answer(content, "answer_dict")


# ---- cells -----------------------------------------------------------------------------------


def format_error(exc):
    """Python's traceback, limited to the user's own cell frames, and bounded."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename.startswith("<cell-")]
    lines = []
    if frames:
        skipped, frames = max(len(frames) - 8, 0), frames[-8:]
        lines.append("Traceback (most recent call last):\n")
        if skipped:
            lines.append(f"  ... {skipped} earlier frames not shown ...\n")
        lines += [ln[:1000] for ln in traceback.StackSummary.from_list(frames).format()]
    only = traceback.format_exception_only(type(exc), exc)
    lines += [ln[:2000] for ln in only]
    text = "".join(lines).rstrip("\n")
    return clean(text if len(text) <= 6000 else text[:3000] + "\n...\n" + text[-3000:])


def run_cell(code):
    CELL["n"] += 1
    CELL["final_this_cell"] = False
    filename = f"<cell-{CELL['n']}>"
    CAPTURE.reset()
    sys.stdout = sys.stderr = CAPTURE
    error, t0 = None, time.monotonic()
    TIMER.start()
    try:
        try:
            linecache.cache[filename] = (len(code), None, code.splitlines(True), filename)
            tree = ast.parse(code, filename, "exec")
            last = None
            if tree.body and isinstance(tree.body[-1], ast.Expr):
                last = ast.Expression(tree.body.pop().value)
            value = run_code(tree, last, filename, NS)  # top-level `await` allowed (worker_extras)
            if value is not None:
                CAPTURE.write(repr(value) + "\n")
        except CellTimeout:
            raise
        except BaseException as exc:  # noqa: B036 - SystemExit, KeyboardInterrupt: all are observations
            error = format_error(exc)
        _check_answer_dict()
    except CellTimeout:
        TIMER.stop()
        error = (
            f"CellTimeout: the cell ran longer than {CFG['cell_timeout']:g} s and was interrupted "
            "(variables set before the interruption are kept)"
        )
    finally:
        TIMER.stop()
    output, cut = CAPTURE.render()
    return {
        "op": "result",
        "output": output,
        "error": error,
        "truncated": cut > 0,
        "chars_cut": cut,
        "timed_out": TIMER.fired,
        "duration_s": time.monotonic() - t0,
        "answer": dict(ANSWER),
    }


def lookup(name):
    if not isinstance(name, str) or name not in NS:
        return {"op": "lookup", "found": False, "value": None, "error": None}
    TIMER.start()
    try:
        value, err = serialize(NS[name])
    except CellTimeout:
        value, err = None, "timed out converting the value"
    finally:
        TIMER.stop()
    return {"op": "lookup", "found": err is None, "value": value, "error": err}


def handle(msg):
    op = msg.get("op")
    try:
        if op == "exec":
            return run_cell(str(msg.get("code", "")))
        if op == "lookup":
            return lookup(msg.get("name"))
        if op == "bind":  # the host sets a variable (a conversation's history_N)
            return bind(msg, NS, HELPER_NAMES, ANSWER, lambda: {"content": None, "ready": False})
        if op == "vars":
            shown = list(SHOW_VARS().items())[:10_000]  # the host shows no more (frame item limit)
            return {"op": "vars", "vars": {clean(str(k)): clean(str(v)) for k, v in shown}}
    except BaseException as e:  # noqa: B036 - the host always gets an answer of the kind it asked for
        TIMER.stop()
        err = f"{type(e).__name__}: the worker failed while serving this request"
        if op == "exec":
            return {"op": "result", "output": "", "error": err, "truncated": False, "chars_cut": 0,
                    "timed_out": TIMER.fired, "duration_s": 0.0, "answer": dict(ANSWER)}  # fmt: skip
        if op in ("lookup", "bind"):
            return {"op": "lookup", "found": False, "value": None, "error": err}
        return {"op": "vars", "vars": {}}
    return {"op": "error", "error": f"unknown op {op!r}"}


# ---- start-up --------------------------------------------------------------------------------


def setup():
    """rlimits, then the uid drop, then seccomp: no user code ever runs before all are in place."""
    failed = []
    for name, value in CFG["rlimits"].items():
        hard = value + 1 if name == "RLIMIT_CPU" else value  # SIGXCPU at soft, SIGKILL a second later
        try:
            resource.setrlimit(getattr(resource, name), (value, hard))
        except (ValueError, OSError, AttributeError):
            failed.append(name)
    if CFG.get("uid") is not None and os.getuid() == 0:
        os.setgroups([])
        os.setgid(CFG["uid"])
        os.setuid(CFG["uid"])
        try:
            os.setuid(0)
            os._exit(70)  # privileges were not dropped: refuse to run user code
        except PermissionError:
            pass
    if sys.platform.startswith("linux"):
        die_with_parent()
    if CFG.get("seccomp"):
        install_seccomp(bytes.fromhex(CFG["seccomp"]))
    exit_when_host_goes(CFG["fd"])
    os.environ.pop("LD_LIBRARY_PATH", None)
    status = {}
    try:
        with open("/proc/self/status") as f:
            status = dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)
    except OSError:
        pass
    sys.path.extend(CFG.get("site") or [])
    sys.argv[:] = [""]  # the sources and config were only for start-up
    try:
        import faulthandler

        faulthandler.enable()  # a segfault leaves a Python traceback in the host's stderr ring
    except Exception:
        pass
    return {
        "op": "hello",
        "pid": os.getpid(),
        "uid": os.getuid(),
        "seccomp": status.get("Seccomp", "0").strip() == "2",
        "no_new_privs": status.get("NoNewPrivs", "0").strip() == "1",
        "cap_eff": status.get("CapEff", "").strip(),
        "rlimit_failures": failed,
    }


def main():
    CHAN.send(setup())
    fds = []
    msg = CHAN.recv(fds)
    if msg.get("op") != "init":
        os._exit(4)
    t0 = time.monotonic()
    try:
        contexts, CELL["context_shared"] = load_context(msg, fds)
    except BaseException as e:  # noqa: B036 - report MemoryError too
        CHAN.send({"op": "init_failed", "error": f"{type(e).__name__}: {e}"[:2000]})
        os._exit(5)
    global NS
    main_mod = type(sys)("__main__")  # the REPL namespace IS __main__, so pickle finds user classes
    main_mod.__dict__.update(
        context=contexts[0], llm_query=llm_query, llm_batch=llm_batch, rlm_query=rlm_query,
        SubCallError=SubCallError, SHOW_VARS=SHOW_VARS, FINAL=FINAL, FINAL_VAR=FINAL_VAR,
        answer={"content": None, "ready": False}, ToolError=ToolError,
        llm_query_async=make_async("llm_query_async", llm_query),
        llm_batch_async=make_async("llm_batch_async", llm_batch),
        rlm_query_async=make_async("rlm_query_async", rlm_query),
        **make_stubs(msg.get("tools"), _call),
    )  # fmt: skip
    if len(contexts) > 1:  # several inputs: context_0 ... context_N, `context` is context_0
        main_mod.__dict__.update({f"context_{i}": c for i, c in enumerate(contexts)})
    sys.modules["__main__"] = main_mod
    NS = main_mod.__dict__
    del contexts
    IO_LOCK.acquire()  # held whenever no cell runs, so background threads cannot talk between cells
    CHAN.send({"op": "ready", "load_s": time.monotonic() - t0, "shared": CELL.get("context_shared", False)})
    while True:
        msg = CHAN.recv()
        IO_LOCK.release()
        reply = handle(msg)
        reply["id"] = msg.get("id")
        IO_LOCK.acquire()
        CHAN.send(reply)


main()

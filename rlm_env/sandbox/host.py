"""`Sandbox`: one episode's persistent REPL, as the episode loop uses it.

`await Sandbox.start(config, context, handler)` starts a worker (or `SandboxPool.acquire` hands
over a pre-started one), gives it the context, and from then on `run_cell(code)` returns a
`CellResult` for each code block, always, whatever the code does:

- an exception, a syntax error, a timeout inside the cell: an error observation, state kept;
- a worker that does not answer within `cell_timeout_s + kill_grace_s` (sub-call time not
  counted), dies (memory, os._exit, segfault, SIGXCPU) or breaks the protocol: it is killed and a
  fresh one started on the same context, and the result says `worker_restarted=True` and that
  all variables were lost (and `protocol_violation=True` when a frame was malformed, forged or
  over a limit: frames.py checks every field). Only a failure to start a new worker raises
  (`SandboxStartError`): that is infrastructure, not the model. Nothing the worker sends makes
  `run_cell`, `lookup_variable` or `show_vars` raise.

Sub-calls from the REPL (`llm_query`, `llm_batch`, `rlm_query`, custom tools) arrive as `call` frames while a
cell runs; their arguments are validated here (a bad one becomes `SubCallError` in the REPL)
and then passed to the handler coroutine, which owns budgets and models. Cancelling `run_cell`
kills the worker; the next call restarts it.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from rlm_env.sandbox import context_gc
from rlm_env.sandbox.calls import serve_call
from rlm_env.sandbox.config import SandboxConfig
from rlm_env.sandbox.context import PreparedContext
from rlm_env.sandbox.frames import (
    LookupFrame,
    ResultFrame,
    VarsFrame,
    check_answer_size,
    parse_frame,
    reply_model,
)
from rlm_env.sandbox.launch import resolve_mode
from rlm_env.sandbox.process import WorkerProcess
from rlm_env.sandbox.protocol import ProtocolViolation, WorkerDied, clean_text, truncate_middle

Handler = Callable[[str, dict[str, Any]], Awaitable[Any]]
"""`async def handler(fn, args)`: fn in {"llm_query", "llm_batch", "rlm_query", "tool"}; a
handler with a `tool_specs()` method ([{"name", "doc"}]) gets REPL stubs for those tools."""


@dataclass
class AnswerState:
    """The answer as set by executed code (FINAL, FINAL_VAR, or answer["ready"] = True)."""

    ready: bool = False
    content: Any = None
    """A JSON value, or the str() of a value JSON could not encode; None until ready."""
    via: str | None = None
    error: str | None = None
    """Why an attempted answer was not accepted (str() raised, too large...)."""


@dataclass
class CellResult:
    """What one code block did. `output` is what a notebook would show."""

    output: str = ""
    error: str | None = None
    truncated: bool = False
    chars_cut: int = 0
    timed_out: bool = False
    worker_restarted: bool = False
    duration_s: float = 0.0
    answer: AnswerState = field(default_factory=AnswerState)
    exit_signal: int | None = None
    """When the worker died on its own during this cell: the signal that ended it, if any."""
    oom_killed: bool = False
    """The worker was killed by the kernel for going over its memory cgroup's limit (the model's
    memory use, like RLIMIT_AS; its exit_signal is 9)."""
    protocol_violation: bool = False
    """The worker (the model's code) broke the host protocol: a malformed or forged frame, a
    frame over the size or item limits, replies left unread. The model's fault, never infra."""


MAX_UNREAD_CALLS = 8
"""Call frames in a row the worker may send while a reply of the host is still unread."""


class _Deadline(Exception):
    pass


class Sandbox:
    """One episode's REPL worker (see the module docstring); an async context manager."""

    def __init__(self, config: SandboxConfig, context: PreparedContext, handler: Handler | None, mode: str,
                 warning: str | None, more_contexts: tuple[PreparedContext, ...] = ()):  # fmt: skip
        self.config, self.context, self.handler = config, context, handler
        self.more_contexts = tuple(more_contexts)
        """Further inputs, bound as context_1 ... (with context_0 = context) when given."""
        self.mode, self.mode_warning = mode, warning
        self.restarts = 0
        self.closed = False
        self._worker: WorkerProcess | None = None
        self._answer = AnswerState()
        self._lock = asyncio.Lock()
        self._seq = 0
        self._pending_note: str | None = None  # a restart to report with the next cell
        self._last_note: str | None = None
        self.discard_context_on_close = False
        """Remove the context's store file when this (the last sandbox here on it) closes: for
        one-off contexts such as an rlm_query child's prompt (see context_gc)."""
        context_gc.sweep_default_store_once()
        for c in (context, *self.more_contexts):
            context_gc.hold(c)

    # ---- life cycle ------------------------------------------------------------------------

    @classmethod
    async def start(
        cls,
        config: SandboxConfig | None,
        context: PreparedContext,
        handler: Handler | None = None,
        more_contexts: tuple[PreparedContext, ...] = (),
    ) -> Sandbox:
        """Cold start: a new worker, given `context` (and `more_contexts`), ready for cells."""
        config = config or SandboxConfig()
        mode, warning = resolve_mode(config)
        self = cls(config, context, handler, mode, warning, more_contexts)
        await self._attach(await WorkerProcess.spawn(config, mode))
        return self

    async def _attach(self, worker: WorkerProcess) -> None:
        try:
            await worker.load_context(
                self.context, self.config.startup_timeout_s, self.more_contexts, self._tool_specs()
            )
        except BaseException:
            await worker.kill()
            raise
        self._worker = worker

    def _tool_specs(self) -> list[dict[str, str]]:
        """Custom tools the REPL gets stubs for: the handler's `tool_specs()`, if it has one."""
        specs = getattr(self.handler, "tool_specs", None)
        return list(specs()) if callable(specs) else []

    async def _restart(self) -> None:
        if self.closed:  # close() raced a request: do not start a worker nobody will close
            raise RuntimeError("this sandbox was closed while a request was running")
        if self._worker is not None:
            await self._worker.kill()
            self._worker = None
        self.restarts += 1
        self._answer = AnswerState()
        await self._attach(await WorkerProcess.spawn(self.config, self.mode))

    async def close(self) -> None:
        """Kill the worker and everything it started. Idempotent."""
        if not self.closed:
            self.closed = True
            for c in (self.context, *self.more_contexts):
                context_gc.release(c, self.discard_context_on_close)
        if self._worker is not None:
            await self._worker.kill()
            self._worker = None

    async def __aenter__(self) -> Sandbox:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def worker(self) -> WorkerProcess | None:
        """The current worker process (pids, uid, hello report), for diagnostics and tests."""
        return self._worker

    @property
    def layers(self) -> dict[str, Any]:
        """Which isolation layers the current worker reports (uid, seccomp, no_new_privs...),
        whether it is in a memory cgroup of its own, and whether its `context` shares the page
        cache with other episodes."""
        w = self._worker
        hello = w.hello if w else {}
        shared = w.context_shared if w else False
        cgroup = w is not None and w.cgroup is not None
        return {"mode": self.mode, **{k: v for k, v in hello.items() if k != "op"}, "context_shared": shared,
                "memory_cgroup": cgroup}  # fmt: skip

    def pids(self) -> list[int]:
        """Host pids of the current worker's processes (for memory accounting and checks)."""
        return self._worker.pids() if self._worker else []

    def get_answer(self) -> AnswerState:
        return self._answer

    # ---- requests --------------------------------------------------------------------------

    async def _request(self, msg: dict[str, Any], reply_op: str, build: Callable[[Any], Any]) -> Any:
        """Send one request, serve sub-calls until its reply, within the deadline; return
        `build(checked reply)`. Anything wrong with the reply is a ProtocolViolation."""
        assert self._worker is not None
        worker = self._worker
        self._seq += 1
        msg["id"] = self._seq
        await worker.send(msg)
        budget = self.config.cell_timeout_s + self.config.kill_grace_s
        unread = 0  # call frames that arrived while a reply was still unread
        while True:
            t0 = time.monotonic()
            try:
                frame = await asyncio.wait_for(worker.recv(), max(budget, 0.001))
            except TimeoutError:
                raise _Deadline from None
            budget -= time.monotonic() - t0
            if frame["op"] == "call":
                # The stubs send one call, then read its whole reply: a call arriving while a
                # reply is unread was written past them (a flood). A few are let through.
                unread = unread + 1 if worker.unread_bytes() > 0 else 0
                if unread > MAX_UNREAD_CALLS:
                    raise ProtocolViolation(
                        f"the worker sent {unread} sub-call requests in a row without reading the replies"
                    )
                # handler time is not charged
                await serve_call(worker, frame, self.handler, self.config.max_batch_prompts)
                # Yield: buffered frames and an unpaused writer never suspend, so a flood of
                # calls answered at once (e.g. refused by the budget) would starve the loop.
                await asyncio.sleep(0)
                continue
            if frame["op"] != reply_op or frame.get("id") != msg["id"]:
                raise ProtocolViolation(
                    f"the worker sent an unexpected {clean_text(frame['op'], 50)!r} frame"
                )
            reply = parse_frame(frame, reply_model(reply_op))
            try:
                return build(reply)
            except ProtocolViolation:
                raise
            except Exception as e:  # noqa: BLE001 - whatever the worker's values break is its fault
                raise ProtocolViolation(
                    f"the worker's {reply_op!r} reply could not be used ({type(e).__name__})"
                ) from None

    async def _guarded(
        self, msg: dict[str, Any], reply_op: str, build: Callable[[Any], Any]
    ) -> tuple[Any, CellResult | None]:
        """(reply, None), or (None, the CellResult describing the failure and restart)."""
        if self.closed:
            raise RuntimeError("this sandbox is closed")
        if self._worker is None or self._worker.killed:  # an earlier request was cancelled
            await self._restart()
            self._pending_note = (
                "[sandbox] An earlier request was cancelled, so the REPL worker was restarted; "
                "all variables from earlier cells were lost."
            )
        note = self._pending_note
        self._pending_note = None
        self._last_note = note
        t0 = time.monotonic()
        exit_signal, violation, oom_killed = None, False, False
        try:
            return await self._request(msg, reply_op, build), None
        except _Deadline:
            limit = self.config.cell_timeout_s + self.config.kill_grace_s
            why = f"did not answer within {limit:g} s (time limit plus grace) and was killed"
            err, timed_out = (
                f"CellTimeout: the cell ran past its {self.config.cell_timeout_s:g} s limit",
                True,
            )
        except WorkerDied as e:
            code = await self._worker.exit_code() if self._worker else None
            exit_signal = _signal_of(code)
            text = _exit_text(code)
            cgroup = self._worker.cgroup if self._worker else None
            if cgroup is not None and cgroup.oom_kills() > 0:
                text, oom_killed = f"killed by the kernel: over the sandbox's memory limit ({text})", True
            why, timed_out = f"died ({text})", False
            err = f"WorkerDied: the REPL process died ({text}): {e}"
        except ProtocolViolation as e:
            why, timed_out, violation = f"broke the host protocol ({e})", False, True
            err = f"ProtocolViolation: {e}"
        except BaseException:
            if self._worker is not None:  # cancelled mid-request: the worker state is unknown
                await self._worker.kill()
            raise
        tail = self._worker.tail() if self._worker else ""
        await self._restart()
        output = (
            f"[sandbox] The REPL worker {why}. A fresh worker was started with the same `context`; "
            "all variables, imports and functions defined in earlier cells were lost."
        )
        if note:
            output = note + "\n" + output
        if tail:
            output += "\n[sandbox] Last output of the old worker:\n" + tail
        result = CellResult(output=output, error=err, timed_out=timed_out, worker_restarted=True,
                            duration_s=time.monotonic() - t0, answer=self._answer,
                            exit_signal=exit_signal, protocol_violation=violation, oom_killed=oom_killed)  # fmt: skip
        return None, result

    async def run_cell(self, code: str) -> CellResult:
        """Run one code block; never raises for anything the code does."""
        async with self._lock:
            result, failed = await self._guarded({"op": "exec", "code": code}, "result", self._result_from)
            if failed is not None:
                return failed
            assert result is not None
            self._answer = result.answer
            note, self._last_note = self._last_note, None
            if note:
                result.worker_restarted = True
                result.output = note + ("\n" + result.output if result.output else "")
            return result

    def _result_from(self, reply: ResultFrame) -> CellResult:
        """A CellResult from the worker's checked reply: re-cut output, re-checked answer."""
        limit = self.config.max_output_chars
        output = clean_text(reply.output)
        chars_cut = reply.chars_cut
        if len(output) > limit + 100:  # the worker's own cut leaves limit + a marker
            output, extra = truncate_middle(output, limit)
            chars_cut += extra
        error = None if reply.error is None else clean_text(reply.error, 20_000)
        ans = reply.answer
        ready, content = ans.ready, ans.content
        ans_err = None if ans.error is None else clean_text(ans.error, 2000)
        if ready:  # re-check what the worker vouched for: only a forged frame fails here
            check_answer_size(content, self.config.answer_max_bytes, "answer")  # before any copy
            content = json.loads(clean_text(json.dumps(content, ensure_ascii=False)))
        answer = AnswerState(ready=ready, content=content if ready else None, via=ans.via, error=ans_err)
        return CellResult(
            output=output,
            error=error,
            truncated=chars_cut > 0,
            chars_cut=chars_cut,
            timed_out=reply.timed_out,
            duration_s=reply.duration_s,
            answer=answer,
        )

    def _lookup_from(self, reply: LookupFrame) -> tuple[bool, Any]:
        if not reply.found:
            return False, None
        value = reply.value
        check_answer_size(value, self.config.answer_max_bytes, "value")
        return True, clean_text(value) if isinstance(value, str) else value

    async def lookup_variable(self, name: str) -> tuple[bool, Any]:
        """(True, JSON value or str) if the REPL has a usable variable `name`, else (False, None).

        The value is within `answer_max_bytes` (checked here, whatever the worker says)."""
        async with self._lock:
            found, failed = await self._guarded(
                {"op": "lookup", "name": str(name)}, "lookup", self._lookup_from
            )
            if failed is not None:
                self._pending_note = failed.output
                return False, None
            self._pending_note, self._last_note = self._last_note, None  # a restart notice waits for a cell
            return found

    async def bind_variable(self, name: str, value: Any, reset_answer: bool = False) -> bool:
        """Set the REPL variable `name` to a JSON `value` (e.g. a conversation's history_N);
        `reset_answer` also clears the answer state, so the next cell starts unanswered.
        True when the worker says it did; a failure restarts it like a lookup's does."""
        json.dumps(value)  # the host's own value: fail here, clearly, if it cannot travel
        msg = {"op": "bind", "name": str(name), "value": value, "reset_answer": reset_answer}
        async with self._lock:
            done, failed = await self._guarded(msg, "lookup", lambda reply: reply.found)
            if failed is not None:
                self._pending_note = failed.output
                return False
            if reset_answer:
                self._answer = AnswerState()
            self._pending_note, self._last_note = self._last_note, None
            return bool(done)

    async def show_vars(self) -> dict[str, str]:
        """{name: type name} of the user's variables in the REPL."""

        def build(reply: VarsFrame) -> dict[str, str]:
            items = list(reply.vars.items())[:10_000]
            return {clean_text(k, 200): clean_text(v, 200) for k, v in items}

        async with self._lock:
            found, failed = await self._guarded({"op": "vars"}, "vars", build)
            if failed is not None:
                self._pending_note = failed.output
                return {}
            self._pending_note, self._last_note = self._last_note, None
            return found


_SIGNALS = {6: "SIGABRT", 9: "SIGKILL: the CPU-time limit, or out of memory", 11: "SIGSEGV: a crash in C code",
            24: "SIGXCPU: the CPU-time limit", 25: "SIGXFSZ: the file-size limit"}  # fmt: skip


def _signal_of(code: int | None) -> int | None:
    if code is None:
        return None
    return -code if code < 0 else code - 128 if code > 128 else None


def _exit_text(code: int | None) -> str:
    if code is None:
        return "exit status unknown"
    sig = _signal_of(code)
    if sig is not None:
        return f"killed by signal {sig}" + (f", {_SIGNALS[sig]}" if sig in _SIGNALS else "")
    return f"exit code {code}"

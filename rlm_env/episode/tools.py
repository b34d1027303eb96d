"""Custom tools: Python functions a user declares in config, callable by the root's code and,
optionally, by sub-models through a text tool loop.

A tool is `ToolConfig(function="pkg.module:function", ...)`. The root's REPL gets a stub of the
same name; calling it sends a `call` frame (`fn="tool"`) that the sandbox host validates
(rlm_env/sandbox/calls.py) and hands to `ToolRunner.call`, which runs the real function here, in
the host process, on a thread of the tools' own pool (16 threads) under the tool's deadline.

What is guaranteed, call by call, before and after the function runs:

- only declared tools run: the name is looked up in the config, never imported from the frame;
- the per-tool call budget (`max_calls`, per episode) is charged before the function runs;
- the arguments (JSON, as they arrived) are at most `max_arg_bytes` of JSON;
- the result must be JSON (no NaN, no sets, no objects) of at most `max_result_bytes`, and the
  REPL gets a fresh copy decoded from that JSON;
- anything that goes wrong (unknown tool, budget, size, timeout, the function raising) comes back
  to the REPL as a catchable `ToolError` and is recorded as a `ToolCall` with its error. It is
  never an infrastructure failure: a user's tool is part of the task, not the environment.

Not guaranteed: a tool that passes its deadline cannot be killed (Python threads cannot be), so
its thread runs on in the background until the function returns; the call itself has already
failed with a timeout. Stuck tools can fill the tools' thread pool; later tool calls then wait
in its queue and fail at their own deadline, while nothing else in the host waits on that pool. Tools run with the host's privileges: declare only functions you trust
with any JSON arguments the model may invent.

Sub-model tools (`scope = "sub"` or `"both"`): `llm_query` prompts are sent with a system
message listing those tools in the Hermes format, and a reply holding
`<tool_call>{"name": ..., "arguments": {...}}</tool_call>` is parsed from the text here
(`parse_tool_call`), run through the same `ToolRunner` (same budgets and limits), answered with
`<tool_response>...</tool_response>` as the next user message, and asked again, at most
`EpisodeConfig.max_sub_tool_turns` times. Parsing the text ourselves, rather than the engine's
`tools=` support, works with every engine client (vLLM, HF, scripted, OpenAI servers) and any
chat template; the tiny default model has no tool-call parser of its own.
"""

from __future__ import annotations

import asyncio
import functools
import importlib
import json
import re
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from rlm_env.episode.record import ToolCall

if TYPE_CHECKING:
    from rlm_env.episode.episode import Episode
    from rlm_env.models.base import Completion, SamplingParams

RESERVED_NAMES = frozenset(
    "context llm_query llm_batch rlm_query SubCallError ToolError SHOW_VARS FINAL FINAL_VAR answer llm_query_async llm_batch_async rlm_query_async "
    "print len str int dict list open exec eval input help".split()
)
"""Names a tool may not take: the REPL's own helpers and the builtins code leans on most."""
_TOOL_THREADS = ThreadPoolExecutor(max_workers=16, thread_name_prefix="rlm-tool")
"""Tools' own threads: a tool stuck past its deadline holds one of these, never a thread of the
event loop's default executor (which parses big frames and tokenizes prompts for every episode)."""
_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,63}")
_FUNCTION = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*")


class ToolConfig(BaseModel):
    """One user-declared tool."""

    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)

    function: str
    """Where the function lives, as "pkg.module:function"; imported when the config loads."""
    name: str | None = None
    """The name the REPL and sub-models call it by (default: the function's own name). Must be a
    Python identifier and must not shadow the REPL's helpers (llm_query, FINAL, context...)."""
    description: str = Field("", max_length=2000)
    """Shown in the system prompt next to the call's signature: what it does, what it returns."""
    scope: Literal["root", "sub", "both"] = "root"
    """Who may call it: the root's REPL code, sub-models (llm_query) through the tool loop, or both."""
    max_calls: int = Field(32, ge=0)
    """Calls of this tool per episode (root and sub-model calls together); more raise ToolError."""
    timeout_s: float = Field(10.0, gt=0)
    """Deadline of one call; a later call fails with ToolError (its thread is not killed)."""
    max_arg_bytes: int = Field(65_536, gt=0)
    """Largest JSON encoding of one call's arguments."""
    max_result_bytes: int = Field(65_536, gt=0)
    """Largest JSON encoding of one call's result."""

    @model_validator(mode="after")
    def _check(self) -> ToolConfig:
        if not _FUNCTION.fullmatch(self.function):
            raise ValueError(f"tool function {self.function!r} must look like 'pkg.module:function'")
        name = self.tool_name
        if not _NAME.fullmatch(name):
            raise ValueError(f"tool name {name!r} is not a plain identifier (letters, digits, _)")
        if name in RESERVED_NAMES:
            raise ValueError(f"tool name {name!r} would shadow the REPL's own {name!r}; pick another name")
        resolve(self.function)  # fail at load, with the reason, not in the middle of an episode
        return self

    @property
    def tool_name(self) -> str:
        return self.name or self.function.rsplit(":", 1)[1]


def resolve(spec: str) -> Callable[..., Any]:
    """The callable named by "pkg.module:function", or ValueError saying why not."""
    module_name, _, attr = spec.partition(":")
    try:
        fn = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"tool function {spec!r} cannot be loaded ({type(e).__name__}: {e})") from None
    if not callable(fn):
        raise ValueError(f"tool function {spec!r} is not callable")
    return fn


def check_unique(tools: tuple[ToolConfig, ...]) -> None:
    names = [t.tool_name for t in tools]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"tool names must be unique; declared twice: {', '.join(dupes)}")


def signature_line(tool: ToolConfig) -> str:
    """`name(a, b=1) -> ...: description`, for prompts."""
    import inspect

    try:
        sig = str(inspect.signature(resolve(tool.function), eval_str=True))
    except NameError:
        sig = str(inspect.signature(resolve(tool.function)))
    except (TypeError, ValueError):
        sig = "(...)"
    return f"`{tool.tool_name}{sig}`: {tool.description or 'a custom tool'}"


def root_tools_prompt(tools: tuple[ToolConfig, ...]) -> str:
    """The system prompt's tool section ("" when the root has none)."""
    lines = [f"- {signature_line(t)}" for t in tools if t.scope in ("root", "both")]
    if not lines:
        return ""
    return (
        "\n\nCustom tools, callable in the REPL like functions (JSON arguments and results; a failed "
        "call raises `ToolError`):\n" + "\n".join(lines)
    )


class ToolRunner:
    """Runs declared tools for one episode, under their budgets and limits, and records them."""

    def __init__(self, episode: Episode):
        self.episode = episode
        self.tools = {t.tool_name: t for t in episode.config.tools}
        self.used: dict[str, int] = dict.fromkeys(self.tools, 0)
        self.functions = {n: resolve(t.function) for n, t in self.tools.items()}  # imported at config load
        self._count = 0

    def specs(self) -> list[dict[str, str]]:
        """What the REPL's stubs are built from: the root-scope tools' names and descriptions."""
        return [{"name": n, "doc": t.description} for n, t in self.tools.items() if t.scope != "sub"]

    def sub_tools(self) -> list[ToolConfig]:
        return [t for t in self.tools.values() if t.scope != "root"]

    async def call(self, name: Any, args: Any, kwargs: Any, scope: str = "root") -> Any:
        """Run one call and record it; RuntimeError (the REPL's ToolError) for any failure."""
        ep = self.episode
        self._count += 1
        record = ToolCall(
            id=f"{ep.call_prefix}tool-{self._count}",
            tool=str(name)[:100],
            caller=scope,
            depth=ep.depth,
            parent_id=ep.current_root_call_id,
            cell=len(ep.record.cells),
            args=[],
            kwargs={},
        )
        started = time.monotonic()
        try:
            value = await self._run(name, args, kwargs, scope, record)
            record.result = value
            return value
        except Exception as e:
            record.error = f"{type(e).__name__}: {e}" if not isinstance(e, _Refused) else str(e)
            raise RuntimeError(record.error) from None
        finally:
            record.duration_s = round(time.monotonic() - started, 6)
            if scope == "root":
                ep.record.tool_calls.append(record)
            self.last = record

    async def _run(self, name: Any, args: Any, kwargs: Any, scope: str, record: ToolCall) -> Any:
        tool = self.tools.get(name) if isinstance(name, str) else None
        if (
            tool is None
            or (scope == "root" and tool.scope == "sub")
            or (scope == "sub" and tool.scope == "root")
        ):
            known = ", ".join(n for n, t in self.tools.items() if t.scope in (scope, "both")) or "none"
            raise _Refused(f"no tool named {str(name)[:100]!r} is available here (tools: {known})")
        if not isinstance(args, list) or not isinstance(kwargs, dict):
            raise _Refused(f"{tool.tool_name}: arguments must be a list and keyword arguments an object")
        size = len(json.dumps([args, kwargs], ensure_ascii=False).encode("utf-8", "replace"))
        if size > tool.max_arg_bytes:
            raise _Refused(
                f"{tool.tool_name}: arguments are {size:,} bytes of JSON; the limit is {tool.max_arg_bytes:,}"
            )
        record.args, record.kwargs = args, kwargs
        if self.used[tool.tool_name] >= tool.max_calls:
            raise _Refused(f"{tool.tool_name}: call budget spent ({tool.max_calls} calls per episode)")
        self.used[tool.tool_name] += 1
        fn = self.functions[tool.tool_name]
        try:
            async with asyncio.timeout(tool.timeout_s):
                call = functools.partial(fn, *args, **kwargs)
                value = await asyncio.get_running_loop().run_in_executor(_TOOL_THREADS, call)
        except TimeoutError:
            raise _Refused(f"{tool.tool_name}: no result within its {tool.timeout_s:g} s timeout") from None
        try:
            text = json.dumps(value, ensure_ascii=False, allow_nan=False)
        except (TypeError, ValueError, RecursionError) as e:
            raise _Refused(
                f"{tool.tool_name}: returned a value that is not JSON ({type(value).__name__}: {e})"
            ) from None
        size = len(text.encode("utf-8", "replace"))
        if size > tool.max_result_bytes:
            raise _Refused(
                f"{tool.tool_name}: result is {size:,} bytes of JSON; the limit is {tool.max_result_bytes:,}"
            )
        return json.loads(text)


class _Refused(Exception):
    """A tool call refused or failed by the runner itself (its message is the whole error)."""


# ---- the sub-model tool loop -------------------------------------------------------------------

_TOOL_CALL = re.compile(r"<tool_call>\s*(\{.*?\})\s*</tool_call>", re.DOTALL)


def parse_tool_call(text: str) -> dict[str, Any] | None:
    """The first Hermes-style `<tool_call>{"name": ..., "arguments": {...}}</tool_call>` in a
    reply, or None (no call, or a malformed one: the reply is then taken as the answer)."""
    m = _TOOL_CALL.search(text)
    if m is None:
        return None
    try:
        call = json.loads(m.group(1))
    except (ValueError, RecursionError):
        return None
    if not isinstance(call, dict) or not isinstance(call.get("name"), str):
        return None
    arguments = call.get("arguments", {})
    return {"name": call["name"], "arguments": arguments if isinstance(arguments, dict) else {}}


def sub_tools_system_message(tools: list[ToolConfig]) -> dict[str, str]:
    lines = "\n".join(f"- {signature_line(t)}" for t in tools)
    return {
        "role": "system",
        "content": "You may call these tools:\n" + lines + "\nTo call one, reply with only "
        '<tool_call>{"name": "NAME", "arguments": {"ARG": VALUE}}</tool_call>. The result comes back '
        "as <tool_response>...</tool_response>; then answer the question.",
    }


async def generate_with_tools(
    model: Any, messages: list[dict[str, str]], params: SamplingParams, runner: ToolRunner, max_turns: int
) -> tuple[Completion, list[dict[str, Any]], int, int]:
    """(final completion, tool turns, prompt tokens, completion tokens over all turns).

    `messages` is extended in place with the tool turns. At most `max_turns` tool calls run; the
    reply after the last one is final even if it asks for another (that call is not run)."""
    from rlm_env.models.base import count_tokens_fallback

    turns: list[dict[str, Any]] = []
    prompt_tokens = completion_tokens = 0
    while True:
        completion = await model.generate(messages, params)
        prompt_tokens += completion.num_prompt_tokens or 0
        completion_tokens += completion.num_completion_tokens or count_tokens_fallback(completion.text)
        call = parse_tool_call(completion.text)
        if call is None or len(turns) >= max_turns:
            return completion, turns, prompt_tokens, completion_tokens
        turn: dict[str, Any] = {"completion_text": completion.text, "tool": call["name"][:100],
                                "arguments": call["arguments"]}  # fmt: skip
        try:
            result = await runner.call(call["name"], [], call["arguments"], scope="sub")
            turn["result"] = result
            response = json.dumps(result, ensure_ascii=False)
        except RuntimeError as e:
            turn["error"] = str(e)
            response = f"error: {e}"
        turn["duration_s"] = runner.last.duration_s
        turns.append(turn)
        messages.append({"role": "assistant", "content": completion.text})
        messages.append({"role": "user", "content": f"<tool_response>{response}</tool_response>"})

"""The REPL's custom-tool stubs (worker side; standard library only, loaded as `rlm_worker_tools`).

The host names the episode's tools in the `init` frame (name and description only: no code, no
module path crosses into the sandbox). For each one the REPL gets a function of that name whose
only power is to send a `call` frame `{"fn": "tool", "args": {"name", "args", "kwargs"}}` and
wait for the reply; the host runs the real function. A failure comes back as `ToolError`.
Nothing here is a security boundary: model code can forge the same frame, and the host checks
every one (rlm_env/sandbox/calls.py, then the episode's ToolRunner).
"""

HELPER_NAMES = set(
    "context llm_query llm_batch rlm_query SubCallError ToolError SHOW_VARS FINAL FINAL_VAR answer".split()
)
"""The REPL's helpers, which SHOW_VARS leaves out and no tool may shadow; tool stubs join it."""


class ToolError(Exception):
    """A custom tool call failed on the host side (unknown tool, budget, size, timeout, non-JSON
    result, or the tool raised); the message says which."""


ToolError.__module__ = "__main__"  # tracebacks in the REPL say "ToolError: ...", like a user class


def make_stub(name, doc, call):
    """The REPL function `name(*args, **kwargs)`, sending its call through `call(fn, args)`."""

    def stub(*args, **kwargs):
        try:
            return call("tool", {"name": name, "args": list(args), "kwargs": kwargs})
        except Exception as e:  # SubCallError from the frame exchange: the host's refusal
            raise ToolError(str(e)) from None

    stub.__name__ = stub.__qualname__ = name
    stub.__doc__ = doc or f"Custom tool {name} (runs on the host)."
    return stub


def make_stubs(specs, call):
    """{name: stub} for the init frame's tool specs; malformed or helper names are skipped (the
    host refuses those at config load, so only a broken host sends them)."""
    stubs = {}
    for spec in specs if isinstance(specs, list) else []:
        name = spec.get("name") if isinstance(spec, dict) else None
        if isinstance(name, str) and name.isidentifier() and name not in HELPER_NAMES:
            doc = spec.get("doc")
            stubs[name] = make_stub(name, doc if isinstance(doc, str) else "", call)
    HELPER_NAMES.update(stubs)
    return stubs

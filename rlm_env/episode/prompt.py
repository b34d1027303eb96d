"""The root prompt: metadata about the context, never the context itself.

The root model sees a constant-size description (question, the type of `context`, its total
length, per-item lengths for a list or dict, a short prefix), the REPL's names and the budgets.
However long the context is, this prompt stays the same size: that is the whole point of an RLM.
"""

from __future__ import annotations

from typing import Any

from rlm_env.episode.config import EpisodeConfig
from rlm_env.episode.tools import root_tools_prompt

SYSTEM_PROMPT = """You answer a question about a long input that you cannot read directly.
The input is stored in a Python REPL as the variable `context`. Write Python code in ```repl
blocks; each block runs in the same persistent REPL and you see its (truncated) output.

Available in the REPL:
- `context`: the input ({context_type}).
- `llm_query(prompt) -> str`: ask a language model about a piece of text (it cannot see `context`
  unless you put text into the prompt).
- `llm_batch(prompts) -> list[str]`: many llm_query calls in parallel, results in order.
- `rlm_query(prompt) -> str`: hand a sub-problem to a recursive copy of you.
- `SHOW_VARS()`: list your variables.
- `FINAL(value)`: give your final answer from code; `FINAL_VAR("name")` answers with a variable.
A failed sub-call raises `SubCallError`.

Budgets: {max_turns} replies, {max_sub_calls} sub-calls, each cell stops after {cell_timeout}s, and
output is cut to {max_output} characters. Look at the data with code (slicing, search, regex)
before calling models; call FINAL(...) inside a ```repl block as soon as you know the answer.

Example:
```repl
print(len(context), context[:200])
```"""


def context_description(meta: dict[str, Any], max_items_listed: int = 20, name: str = "context") -> str:
    """Describe `context` (or `name`) from its metadata: type, length, item lengths, a prefix."""
    type_name = meta.get("type_name", "str")
    length = meta.get("length", 0)
    size_bytes = meta.get("size_bytes", 0)
    lines = [f"`{name}` is a {type_name}"]
    if type_name == "str":
        lines[0] += f" of {length:,} characters ({size_bytes:,} bytes)."
    else:
        lines[0] += f" with {length:,} items ({size_bytes:,} bytes as JSON)."
        item_lengths = meta.get("item_lengths") or []
        if item_lengths:
            shown = ", ".join(f"{n:,}" for n in item_lengths[:max_items_listed])
            more = (
                f", ... ({len(item_lengths) - max_items_listed} more)"
                if len(item_lengths) > max_items_listed
                else ""
            )
            lines.append(f"Item lengths in characters: {shown}{more}.")
    prefix = meta.get("prefix", "")
    if prefix:
        lines.append(f"It begins with:\n<<<\n{prefix}\n>>>")
    return "\n".join(lines)


def contexts_description(metas: list[dict[str, Any]]) -> str:
    """Several inputs: how many, then each described as context_i (shorter prefixes)."""
    head = (
        f"There are {len(metas)} inputs, bound as `context_0` ... `context_{len(metas) - 1}` "
        "(`context` is `context_0`)."
    )
    parts = [context_description({**m, "prefix": m.get("prefix", "")[:200]}, 10, f"context_{i}")
             for i, m in enumerate(metas)]  # fmt: skip
    return "\n\n".join([head, *parts])


def build_root_messages(
    question: str, meta: dict[str, Any], config: EpisodeConfig, more_metas: list[dict[str, Any]] | None = None
) -> list[dict[str, str]]:
    """The first two messages of every root transcript (`more_metas`: further inputs)."""
    template = config.system_prompt or SYSTEM_PROMPT
    system = template.format(
        context_type=meta.get("type_name", "str"),
        max_turns=config.budget.max_root_turns,
        max_sub_calls=config.budget.max_sub_calls,
        cell_timeout=config.sandbox.cell_timeout_s,
        max_output=config.sandbox.max_output_chars,
    ) + root_tools_prompt(config.tools)
    described = contexts_description([meta, *more_metas]) if more_metas else context_description(meta)
    user = f"{described}\n\nQuestion: {question}\n\nReply with a ```repl block of Python code."
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


def format_observation(sections: list[str], turns_left: int) -> str:
    """Join the outputs of one reply's cells into the next user message."""
    body = "\n\n".join(sections) if sections else "(no output)"
    return f"{body}\n\n[{turns_left} replies left]"


def context_meta(prepared: Any) -> dict[str, Any]:
    """What the root prompt and the record say about the context (never its content)."""
    return {
        "type_name": prepared.type_name,
        "length": prepared.length,
        "size_bytes": prepared.size_bytes,
        "item_lengths": list(prepared.item_lengths or []),
        "prefix": prepared.prefix,
        "sha256": prepared.sha256,
    }


def describe_cell(index: int, total: int, result: Any) -> str:
    """One cell's part of the observation."""
    head = f"[repl block {index + 1} of {total}]" if total > 1 else "[repl output]"
    parts = [head]
    if result.output:
        parts.append(result.output.rstrip("\n"))
    if result.error:
        parts.append(f"Error: {result.error}")
    if result.timed_out:
        parts.append("(the cell was stopped: it ran past the per-cell time limit)")
    if result.worker_restarted:
        parts.append("(the REPL worker had to be restarted: all variables were lost; `context` is reloaded)")
    if not result.output and not result.error:
        parts.append("(no output)")
    return "\n".join(parts)

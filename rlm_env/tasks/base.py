"""What a task is: the unit an episode is built from.

A task is data (a context and a question), the expected answer when one is known, and the
name of the scorer that compares an answer with it (see `rewards.scorers`). Generators in this
package return tasks; user datasets load into the same shape. The context is one of:

- `str`: a long text, delivered to the REPL as one shared file and bound to `context` as a str;
- `list` of str (chunks) or any JSON-able list/dict: delivered as JSON, bound as list/dict;
- `ContextDir(path)`: a directory of text files, delivered as a dict {relative path: text}.

A task may carry several inputs (`more_contexts`): each is delivered the same way, and the REPL
binds them as `context_0 ... context_N` (`context` is context_0).

Large generated contexts can also be given as `ContextFile(path, kind)`, a file already on
disk, so a 10M-token context never has to live in the host's memory as a Python object.
`ContextDir`, `ContextFile` and `ContextValue` are defined by the sandbox
(`rlm_env.sandbox.context`: what a REPL can be given) and re-exported here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# The context types are the sandbox's: it defines what it can hold. Re-exported here because
# task generators and datasets build contexts from them.
from rlm_env.sandbox.context import ContextDir, ContextFile, ContextValue

__all__ = ["ContextDir", "ContextFile", "ContextValue", "Task", "context_type_name"]


@dataclass
class Task:
    """One episode's worth of work."""

    id: str
    """Stable identifier (family, split, seed, length), used for resuming and grouping."""
    context: ContextValue
    """The long input; never shown to the root model, only bound in its REPL."""
    question: str
    """What the root model must answer."""
    expected_answer: Any = None
    """The reference answer, when known (None for unlabeled collection)."""
    scorer: str | None = None
    """Name of the scorer in `rewards.scorers.SCORERS` (e.g. "exact", "numeric", "pair_f1")."""
    metadata: dict[str, Any] = field(default_factory=dict)
    """Family, split, seed, length in tokens, difficulty knobs: anything worth logging."""
    more_contexts: tuple[ContextValue, ...] = ()
    """Further inputs, each shared like `context`: the REPL then binds context_0 (= `context`),
    context_1 ... and the root prompt describes each."""

    def describe(self) -> dict[str, Any]:
        """The task as written into the trajectory record (context by reference, not value)."""
        return {
            "id": self.id,
            "question": self.question,
            "expected_answer": self.expected_answer,
            "scorer": self.scorer,
            "metadata": self.metadata,
            "context_type": context_type_name(self.context),
            **(
                {
                    "num_contexts": 1 + len(self.more_contexts),
                    "context_types": [context_type_name(c) for c in (self.context, *self.more_contexts)],
                }
                if self.more_contexts
                else {}
            ),  # fmt: skip
        }


def context_type_name(context: ContextValue) -> str:
    """The type the REPL's `context` variable will have, as a short name."""
    if isinstance(context, ContextDir):
        return "dict"
    if isinstance(context, ContextFile):
        return "str" if context.kind == "text" else "json"
    return type(context).__name__

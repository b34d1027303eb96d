"""Episode configuration: frozen pydantic models whose field docstrings are the help text.

`EpisodeConfig` is what one episode runs under; it is recorded verbatim in the trajectory.
Configs load from TOML (`load_config`), and a bad value fails with pydantic's error naming the
field, e.g. `budget.max_root_turns: Input should be greater than 0`.
"""

from __future__ import annotations

import copy
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from rlm_env.episode.tools import ToolConfig, check_unique
from rlm_env.models.base import SamplingParams
from rlm_env.sandbox.config import SandboxConfig


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)


class SamplingConfig(_Frozen):
    """Sampling settings for one kind of call (root or sub)."""

    max_tokens: int = Field(512, gt=0)
    """Most tokens one call may sample."""
    temperature: float = Field(0.7, ge=0)
    """Softmax temperature (0 = greedy)."""
    top_p: float = Field(1.0, gt=0, le=1)
    """Nucleus sampling mass."""

    def to_params(self, seed: int | None = None) -> SamplingParams:
        return SamplingParams(
            max_tokens=self.max_tokens, temperature=self.temperature, top_p=self.top_p, seed=seed
        )


class BudgetConfig(_Frozen):
    """Every limit an episode (and its children) runs under; spending is recorded per field."""

    max_root_turns: int = Field(30, gt=0)
    """Root model replies before the episode stops with `max_turns`."""
    max_root_tokens: int = Field(65536, gt=0)
    """Total tokens the root model may sample over the episode."""
    context_window: int = Field(8192, gt=0)
    """Root prompt + reply must fit in this many tokens; the episode stops with `context_window`
    before a call that could not fit."""
    max_sub_calls: int = Field(256, ge=0)
    """Sub-calls (llm_query, each llm_batch prompt, each child turn) over the whole episode tree."""
    max_sub_tokens: int = Field(2_000_000, ge=0)
    """Prompt + completion tokens of all sub-calls over the whole episode tree."""
    max_concurrent_sub_calls: int = Field(16, gt=0)
    """Sub-calls in flight at once for this episode tree (llm_batch fans out up to this)."""
    sub_call_timeout_s: float = Field(300.0, gt=0)
    """One sub-call that takes longer than this fails as an infrastructure error (a hung engine
    must not hold the episode until its wall clock runs out)."""
    max_sub_prompt_chars: int | None = Field(None, gt=0)
    """Longest prompt one sub-call may send, in characters; longer ones raise SubCallError in
    the REPL (the model's mistake, kept in training). None (the default) sizes it from the
    sub-engine's real window (4 characters a token), or 200,000 for an engine that states no
    window. Whatever this says, a prompt whose tokens do not fit the sub-engine's window is
    refused the same way, with how many tokens too many."""
    max_depth: int = Field(1, ge=0)
    """Recursion depth of RLMs. The root episode is depth 0; `rlm_query` at depth d starts a
    child episode at d+1 only if d+1 < max_depth, else it falls back to `llm_query`. So 1 (the
    paper's setting) means sub-calls are plain model calls, 2 allows one level of child RLMs."""
    wall_clock_s: float = Field(900.0, gt=0)
    """Wall-clock limit for the episode tree, in seconds."""
    child_budget_fraction: float = Field(1.0, gt=0, le=1)
    """Share of what its parent has left (sub-calls and sub-call tokens, counted over the
    parent's own allotment when it has one) that a child RLM started by `rlm_query` may spend,
    it and its own children together: 0.5 lets a child use at most half of the parent's
    remaining sub-calls. Fixed when the child starts (at least one sub-call); recorded as the
    child's `budget.allotment`. 1.0 (the default) is the paper's shared pool. Turns, the
    window and the wall clock are not split: each child has its own turns, the wall clock is
    the tree's."""
    child_unused_budget: Literal["returns", "forfeited"] = "returns"
    """What happens to the part of a child's allotment it did not use: "returns" to the
    parent's pool (nothing is charged for it), or is "forfeited" (charged to the pool as
    spent when the child ends, so a child's allotment is its true cost)."""


DEFAULT_COMPACTION_PROMPT = (
    "Your context window is nearly full, so the conversation above will be replaced by your own "
    "summary. The REPL keeps every variable. Write a short summary of what you did and learned: "
    "the variables that hold results, what is left to do. Do not write code."
)


class CompactionConfig(_Frozen):
    """Root-history compaction (opt-in): when the root transcript nears the context window, the
    earlier turns are replaced by a summary the root model writes; the REPL is untouched. Each
    compaction starts a new root training sample (see docs/record.md, `compactions`)."""

    enabled: bool = False
    """Compact at all (off by default: a transcript then only grows, and an episode stops with
    `context_window` when it no longer fits)."""
    trigger_fraction: float = Field(0.75, gt=0, le=1)
    """Compact before a root call whose prompt is at least this fraction of
    `budget.context_window` tokens."""
    keep_last_turns: int = Field(1, ge=0)
    """The most recent root turns (reply + REPL output) kept verbatim after the summary."""
    summary_max_tokens: int = Field(256, gt=0)
    """Most tokens the summary call may sample."""
    prompt: str = DEFAULT_COMPACTION_PROMPT
    """The request appended (as a user message) to the turns being summarised."""
    summarizer: Literal["root", "sub"] = "root"
    """Which model writes the summary: the root model itself, or the episode's sub-model."""


class EpisodeConfig(_Frozen):
    """Everything one episode runs under."""

    budget: BudgetConfig = BudgetConfig()
    """Limits (turns, tokens, sub-calls, depth, time)."""
    sandbox: SandboxConfig = SandboxConfig()
    """REPL isolation, per-cell timeout, output truncation."""
    root_sampling: SamplingConfig = SamplingConfig()
    """Sampling for root-model turns."""
    sub_sampling: SamplingConfig = SamplingConfig(max_tokens=256)
    """Default sampling for llm_query/llm_batch (code may override max_tokens/temperature)."""
    sub_call_policy: Literal["frozen", "live_untrained", "trained"] = "live_untrained"
    """How sub-calls relate to training: served by a frozen model, by the live policy but not
    trained on, or by the live policy and trained on (their token ids are then kept)."""
    record_sub_messages: bool = True
    """Keep sub-call prompts in the record (large; turn off for big collection runs)."""
    stop_on_truncated_reply: bool = False
    """End the episode at the first root reply cut by max_tokens (a straggler guard for RL)."""
    code_fence_languages: tuple[str, ...] = ("repl",)
    """Fence tags whose blocks run. The RLM contract runs only ```repl; small models that
    cannot help writing ```python may be given ("repl", "python") (the demo does)."""
    system_prompt: str | None = None
    """Override the built-in root system prompt (it must still explain the REPL)."""
    tools: tuple[ToolConfig, ...] = ()
    """Custom tools (Python functions run by the host) for the root's code and/or sub-models,
    e.g. [[episode.tools]] function = "rlm_env.tools.examples:word_count" (see episode/tools.py)."""
    max_sub_tool_turns: int = Field(4, ge=0)
    """Most tool calls one sub-call (llm_query) may make before its reply is taken as final."""

    @field_validator("tools")
    @classmethod
    def _unique_tools(cls, tools: tuple[ToolConfig, ...]) -> tuple[ToolConfig, ...]:
        check_unique(tools)
        return tools

    compaction: CompactionConfig = CompactionConfig()
    """Root-history compaction (off by default)."""


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> EpisodeConfig:
    """Read an EpisodeConfig from TOML (an [episode] table, or the top level), then apply dotted
    overrides like {"budget.max_root_turns": 4}. Errors name the field and the file."""
    data: dict[str, Any] = {}
    if path is not None:
        with open(path, "rb") as f:
            data = tomllib.load(f)
        data = data.get("episode", data if "eval" not in data else {})
    try:
        return config_from_dict(data, overrides)
    except ValueError as e:
        raise ValueError(f"{path}: {e}" if path else str(e)) from None


def config_from_dict(data: dict[str, Any], overrides: dict[str, Any] | None = None) -> EpisodeConfig:
    """Validate a plain dict (plus dotted overrides) into an EpisodeConfig."""
    merged = copy.deepcopy(data)
    for dotted, value in (overrides or {}).items():
        node = merged
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node.setdefault(key, {})
            if not isinstance(node, dict):
                raise ValueError(f"bad override {dotted!r}: {key!r} is not a section")
        node[leaf] = value
    try:
        return EpisodeConfig.model_validate(merged)
    except ValidationError as e:
        raise ValueError(f"bad episode config:\n{e}") from None

"""The trajectory record: everything an episode did, in one versioned JSON object.

This is the contract between the environment and everything downstream (trainers, rewards,
collection, the viewer). One episode = one `EpisodeRecord`, written as one JSON line. It holds:

- the task (by description, never the context itself) and the config it ran under;
- every model call (`ModelCall`): root turns, sub-calls and child-episode turns, each with its
  role, depth, parent, messages, exact prompt/completion token ids, logprobs and finish reason;
- the root sample (`RootSample`): the append-only root transcript as one token sequence with a
  loss mask (1 on tokens the root model sampled, 0 on prompt/REPL tokens) and aligned logprobs,
  which is exactly what a trainer needs, with no re-rendering of the chat;
- the root-history compactions (`Compaction`, opt-in): each starts a new root segment with its
  own messages and sample (`root_samples()`), all trained with the episode's advantage;
- every executed cell (`CellRecord`), the answer and how it was obtained, the stop reason, the
  budget ledger, flags separating infrastructure failures from model failures, and rewards.

Bump `SCHEMA_VERSION` on any incompatible change; readers check it (`check_record`). The
schema is written down field by field in docs/record.md.

Which episodes a trainer may learn from is decided in exactly one place,
`EpisodeRecord.training_exclusion()`; every consumer (training samples, trainers, collection
filters, adapters) asks it rather than re-deriving the rule from flags or rewards. The rule:
an episode is left out when the environment failed (`flags.infra_failure`: engine, sandbox or
reward judge), when it was never scored or its reward is not a finite number, or when its rubric
masked it (`rewards["mask"] == 0`). Everything the model did wrong (no answer, broken code, a
sub-call prompt too long for the engine, running out of any budget, wall clock included) keeps
the episode in training with the reward it earned.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

SCHEMA_VERSION = 3
"""3: root-history compaction: `compactions` (each with its own root sample and messages),
`ModelCall.segment`, the "summary" call role; version 2 records read unchanged (no compaction).
2: root turns keep their messages once in `root_messages` and their prompt ids as a prefix of
`root_sample` (`ModelCall.num_messages`, `prompt_in_sample`); logprobs may be null (absent);
`ModelCall.checkpoint`; sub-call ids always recorded; call ids unique across the tree."""

Role = Literal["root", "sub", "child", "summary"]
READABLE_SCHEMA_VERSIONS = (2, 3)
"""Versions `check_record` accepts: 2 is 3 without compaction (every new field has its default)."""
AnswerStatus = Literal["confirmed", "fallback_text", "extracted", "none"]
StopReason = Literal[
    "answer",
    "max_turns",
    "max_root_tokens",
    "context_window",
    "wall_clock",
    "model_error",
    "sandbox_error",
    "truncated_reply",
    "aborted",
]


class ModelCall(BaseModel):
    """One call to a model, root or sub or child."""

    id: str
    """Unique within the episode tree: "root-3", "sub-17" in the root episode; a child
    episode prefixes its own path, e.g. "child-1/root-0", "child-1/sub-2"."""
    role: Role
    depth: int
    """0 for the root episode; child episodes run at depth + 1."""
    parent_id: str | None = None
    """For sub-calls: the root call whose code issued it. For child turns: the parent's call."""
    messages: list[dict[str, str]] | None = None
    """The chat messages sent, for sub-calls (when configured). Root and child turns keep theirs
    once, in `EpisodeRecord.root_messages`: see `num_messages`."""
    num_messages: int | None = None
    """For root and child turns: the prompt was `root_messages[:num_messages]` (the transcript
    is append-only, so storing it once per episode loses nothing)."""
    completion_text: str = ""
    prompt_token_ids: list[int] | None = None
    """The exact prompt ids the engine consumed. For root and child turns whose prompt is a
    prefix of the episode's `root_sample.token_ids` (`prompt_in_sample`), left out: it is
    `root_sample.token_ids[:num_prompt_tokens]` (see `EpisodeRecord.call_prompt_ids`)."""
    prompt_in_sample: bool = False
    """True when the prompt ids are `root_sample.token_ids[:num_prompt_tokens]` of this
    call's episode (stored once, so a record grows linearly with its turns)."""
    completion_token_ids: list[int] | None = None
    logprobs: list[float] | None = None
    """Sampling logprob of each completion id; None when the engine returned none (never
    filled in with zeros)."""
    finish_reason: str = ""
    model: str = ""
    weight_version: int | None = None
    """The serving client's reload counter (restarts at 0 with the process; see `checkpoint`)."""
    checkpoint: str | None = None
    """Identity of the weights that sampled this call, stable across restarts: "base:<sha>"
    for the weights an engine started with, or the name given to `reload_weights`. None when
    unknown, or when the weights changed while the call was in flight (`checkpoint_changed`)."""
    checkpoint_changed: bool = False
    """The engine reloaded its weights while this call was being sampled: its tokens come
    from two policies and no single checkpoint can be named."""
    replica: str | None = None
    latency_s: float = 0.0
    num_prompt_tokens: int = 0
    num_completion_tokens: int = 0
    error: str | None = None
    """Set when the call failed (an infrastructure failure); the text is empty then."""
    tool_turns: list[dict[str, Any]] | None = None
    """For a sub-call that used tools (episode/tools.py): each tool turn before the final reply,
    {completion_text, tool, arguments, result or error, duration_s}; `messages` then holds the
    whole exchange. None when no tool was called."""
    segment: int = 0
    """Root and child turns: which root segment holds the prompt (0 before any compaction, k
    after the k-th; see `EpisodeRecord.root_samples`). Summary calls: the segment summarised."""


class ToolCall(BaseModel):
    """One call of a user-declared tool from the root's REPL code (episode/tools.py)."""

    id: str
    """"tool-3" in the root episode; a child episode prefixes its path ("child-1/tool-1")."""
    tool: str
    caller: str = "root"
    depth: int = 0
    parent_id: str | None = None
    """The root call whose code issued it."""
    cell: int = 0
    """Index in `EpisodeRecord.cells` of the cell whose code made the call."""
    args: list[Any] = Field(default_factory=list)
    kwargs: dict[str, Any] = Field(default_factory=dict)
    """The arguments as they arrived (empty when refused before they were checked)."""
    result: Any = None
    """The JSON result the REPL received (None on error)."""
    error: str | None = None
    """Why the call failed (unknown tool, budget, size, timeout, non-JSON result, the function
    raised): the REPL got this as ToolError. The model's or the tool's, never infrastructure."""
    duration_s: float = 0.0


class RootSample(BaseModel):
    """The root transcript as one training sample (append-only, exact sampled ids)."""

    token_ids: list[int] = Field(default_factory=list)
    loss_mask: list[int] = Field(default_factory=list)
    """1 where the root model sampled the token, 0 for prompt, REPL output and template tokens."""
    logprobs: list[float | None] = Field(default_factory=list)
    """Aligned with token_ids: the sampling logprob of each token the model sampled; None for
    prompt/REPL/template tokens and for sampled tokens whose engine returned no logprob."""
    consistent: bool = True
    """False if the engine's prompt ids ever disagreed with the transcript built so far
    (retokenization drift); the sample is then still the engine's own ids, but a trainer may
    want to drop it."""
    available: bool = False
    """False when the root engine did not return token ids (e.g. scripted policy)."""


class Compaction(BaseModel):
    """One root-history compaction: the earlier turns were replaced by a model-written summary
    and a new root segment (a new training sample) began. The REPL was untouched."""

    at_turn: int
    """Root turns taken before it (the next root call, `root-<at_turn>`, is the new segment's first)."""
    tokens_before: int
    """Prompt tokens of the transcript that was compacted."""
    tokens_after: int
    """Prompt tokens of the new segment's first prompt (system, question + summary, kept turns)."""
    kept_turns: int
    """Earlier turns kept verbatim after the summary."""
    summary_call_id: str
    """The `ModelCall` (role "summary") that wrote the summary."""
    messages: list[dict[str, str]] = Field(default_factory=list)
    """The new segment's chat messages (append-only within the segment), like `root_messages`."""
    sample: RootSample = Field(default_factory=RootSample)
    """The new segment's token sample, like `root_sample`."""


class CellRecord(BaseModel):
    """One executed ```repl block."""

    turn: int
    index: int
    """Position of the block within its reply."""
    code: str
    output: str
    error: str | None = None
    duration_s: float = 0.0
    truncated: bool = False
    chars_cut: int = 0
    timed_out: bool = False
    worker_restarted: bool = False
    exit_signal: int | None = None
    oom_killed: bool = False
    """The kernel killed the worker for going over the sandbox's own memory limit: the model's
    memory use (like a MemoryError), not the environment's failure."""
    protocol_violation: bool = False
    """The model's code broke the host protocol (a malformed, forged or oversized frame, a
    flood of calls): the worker was restarted and the cell failed; charged to the model."""


class AnswerRecord(BaseModel):
    status: AnswerStatus = "none"
    """confirmed: set by executed code; fallback_text: FINAL(...) in prose; extracted: taken
    from the REPL after the run hit a limit; none: no answer."""
    content: Any = None
    via: str | None = None
    """How it was set: "FINAL", "FINAL_VAR", "answer_dict", "text_FINAL", "text_FINAL_VAR"."""


class Flags(BaseModel):
    """Who is to blame when something went wrong."""

    infra_failure: bool = False
    """The environment failed (engine down, sandbox crashed, the reward judge unreachable):
    not the model's fault; the episode is left out of training (`training_exclusion`). Never
    set for anything the model caused or could have avoided (budgets, prompt sizes, code)."""
    infra_errors: list[str] = Field(default_factory=list)
    infra_suspected: list[str] = Field(default_factory=list)
    """Events that may be the environment's fault but cannot be told apart from the model's:
    a REPL worker killed by SIGKILL that the host did not send (the host's OOM killer, an
    operator, or the worker's own CPU-time limit). Not counted as infra_failure, so a policy
    cannot dodge its reward this way; trainers may choose to drop such episodes."""
    model_failure: bool = False
    """The model failed on its own (no answer, broke the rules)."""
    sandbox_mode_warning: str | None = None
    """Set when the sandbox ran without bwrap isolation."""


class EpisodeRecord(BaseModel):
    # Non-finite floats (a NaN reward from a custom reward function) are written as the JSON
    # constants NaN/Infinity that Python reads back, instead of null that would fail to load.
    model_config = ConfigDict(ser_json_inf_nan="constants")

    schema_version: int = SCHEMA_VERSION
    episode_id: str
    depth: int = 0
    task: dict[str, Any]
    config: dict[str, Any]
    context_meta: dict[str, Any] = Field(default_factory=dict)
    contexts_meta: list[dict[str, Any]] = Field(default_factory=list)
    """A task with several inputs: the metadata of each (context_0 first, the same as
    `context_meta`), in order; empty for a task with one context."""
    conversation_id: str | None = None
    """Set when this episode is one question of a `Conversation` (one REPL kept across them)."""
    conversation_index: int | None = None
    """Its question's place in the conversation (0 first); earlier answers are `history_N`."""
    sandbox_mode: str = ""
    root_messages: list[dict[str, str]] = Field(default_factory=list)
    """The whole root transcript as chat messages (system, user, then replies and observations)."""
    calls: list[ModelCall] = Field(default_factory=list)
    cells: list[CellRecord] = Field(default_factory=list)
    tool_calls: list[ToolCall] = Field(default_factory=list)
    """Custom tool calls made by the root's code, in order (sub-model tool turns live in their
    sub-call's `ModelCall.tool_turns`)."""
    root_sample: RootSample = Field(default_factory=RootSample)
    answer: AnswerRecord = Field(default_factory=AnswerRecord)
    stop_reason: StopReason | None = None
    budget: dict[str, Any] = Field(default_factory=dict)
    """Every limit and every figure spent (see `episode.budget.BudgetLedger.snapshot`)."""
    flags: Flags = Field(default_factory=Flags)
    rewards: dict[str, float] = Field(default_factory=dict)
    """Reward components and the weighted total ("reward"), filled in by a rubric."""
    children: list[EpisodeRecord] = Field(default_factory=list)
    """Child episodes started by rlm_query, in order."""
    compactions: list[Compaction] = Field(default_factory=list)
    """Root-history compactions, in order; compaction k holds root segment k (segment 0 is
    `root_messages`/`root_sample`). Empty when compaction is off or never triggered."""
    started_at: float = 0.0
    wall_time_s: float = 0.0
    model_time_s: float = 0.0
    """Wall time spent waiting on root-model calls."""
    subcall_time_s: float = 0.0
    """Wall time the REPL spent blocked on sub-calls (llm_query, llm_batch, rlm_query)."""

    def to_json(self) -> str:
        return self.model_dump_json()

    def training_exclusion(self) -> str | None:
        """Why a trainer must leave this episode out, or None to train on it (the one rule;
        see the module docstring). Child episodes share their parent's verdict."""
        if self.flags.infra_failure:
            return "infra_failure"
        reward = self.rewards.get("reward")
        if reward is None:
            return "unscored"
        if not math.isfinite(reward):
            return "non_finite_reward"
        if self.rewards.get("mask", 1.0) == 0.0:
            return "reward_mask"
        return None

    def store_root_prompts_once(self) -> None:
        """Root turns' prompts are prefixes of the one root sample (the transcript is
        append-only): point into it instead of repeating them, which made records grow with the
        square of the turn count. A prompt that is not such a prefix (drift, a reset sample)
        keeps its own ids."""
        samples = self.root_samples()
        for call in self.calls:
            ids = call.prompt_token_ids
            if call.role in ("sub", "summary") or ids is None or call.segment >= len(samples):
                continue
            sample = samples[call.segment].token_ids
            if len(ids) <= len(sample) and sample[: len(ids)] == ids:
                call.prompt_token_ids, call.prompt_in_sample = None, True
                call.num_prompt_tokens = len(ids)

    def call_prompt_ids(self, call: ModelCall) -> list[int] | None:
        """The exact prompt ids of one of this episode's calls, wherever they are stored."""
        if call.prompt_token_ids is not None:
            return list(call.prompt_token_ids)
        if call.prompt_in_sample:
            return self.root_samples()[call.segment].token_ids[: call.num_prompt_tokens]
        return None

    def root_samples(self) -> list[RootSample]:
        """Every root segment's sample in order: `root_sample`, then one per compaction. A
        trainer trains on each (they share the episode's reward and advantage)."""
        return [self.root_sample] + [c.sample for c in self.compactions]

    def segment_messages(self, segment: int) -> list[dict[str, str]]:
        """The chat messages of root segment `segment` (a root call's prompt is
        `segment_messages(call.segment)[:call.num_messages]`)."""
        return self.root_messages if segment == 0 else self.compactions[segment - 1].messages


def check_record(data: dict[str, Any]) -> EpisodeRecord:
    """Parse one record, refusing a schema version this code does not know."""
    version = data.get("schema_version")
    if version not in READABLE_SCHEMA_VERSIONS:
        raise ValueError(
            f"trajectory schema_version {version!r} is not supported "
            f"(expected one of {READABLE_SCHEMA_VERSIONS})"
        )
    return EpisodeRecord.model_validate(data)


class TrajectoryWriter:
    """Appends records as JSON lines, flushing and fsyncing each so a crash loses nothing
    already written. Raises OSError (e.g. disk full) to the caller, who decides what to do."""

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        _drop_torn_tail(self.path)
        self._file = open(self.path, "a", encoding="utf-8")

    def write(self, record: EpisodeRecord) -> None:
        line = record.to_json() + "\n"
        self._file.write(line)
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()

    def __enter__(self) -> TrajectoryWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _drop_torn_tail(path: Path) -> None:
    """A process killed mid-write leaves a last line without its newline; appending after it
    would glue the next record onto the fragment. Cut the fragment off before appending."""
    if not path.is_file():
        return
    with open(path, "rb+") as f:
        size = f.seek(0, os.SEEK_END)
        if size == 0:
            return
        f.seek(size - 1)
        if f.read(1) == b"\n":
            return
        # Walk back to the last newline (records are at most a few MB; read in blocks).
        end = size
        while end > 0:
            start = max(0, end - 65536)
            f.seek(start)
            block = f.read(end - start)
            cut = block.rfind(b"\n")
            if cut >= 0:
                f.truncate(start + cut + 1)
                return
            end = start
        f.truncate(0)


class CorruptRecordError(ValueError):
    """A line other than the last one does not parse: the file was damaged, not torn."""


def read_records(path: str | os.PathLike[str]) -> list[EpisodeRecord]:
    """Read every record. Only a torn last line (a crash mid-write: no trailing newline) is
    skipped; a line that fails to parse anywhere else raises `CorruptRecordError` naming the
    line, so damage is never silently dropped."""
    records = []
    with open(path, encoding="utf-8") as f:
        lines = f.readlines()
    for number, raw in enumerate(lines, start=1):
        line = raw.strip()
        if not line:
            continue
        torn_tail = number == len(lines) and not raw.endswith("\n")
        try:
            data = json.loads(line)
        except json.JSONDecodeError as e:
            if torn_tail:
                continue
            raise CorruptRecordError(f"{path}: line {number} is not valid JSON ({e})") from None
        records.append(check_record(data))
    return records

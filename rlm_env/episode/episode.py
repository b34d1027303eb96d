"""The episode: the one core contract every adapter (gymnasium, verifiers, trainers) wraps.

An `Episode` is built from a `Task` and an `EpisodeConfig`, with a root model and a sub-model
behind the `ModelClient` interface. Its life:

1. `start()` writes the context once to a read-only file, starts a sandboxed REPL worker with
   `context` bound, and builds the root prompt from metadata only. It returns the messages.
2. `step(reply)` takes one root reply (a `Completion` from a model, or plain text from a person
   or an adapter), runs every ```repl block in order, and returns the observation (one user
   message holding every block's output) and whether the episode is over. Sub-calls made by the
   code are routed by `SubCallRouter` under the shared budget.
3. `run()` drives steps with the root model until the answer is set by code, a limit is hit, or
   something fails; `finish()` closes the sandbox, settles the answer (confirmed, text fallback,
   extracted from the REPL after a limit, or none), scores it with the rubric, and returns the
   `EpisodeRecord`.

Failures are sorted as they happen: a model that writes no code, broken code or a flood of output
gets an observation and the episode goes on; an engine or sandbox failure stops it with
`infra_failure` set, so no reward blames the model for it. Running out of a budget is always
the model's: the wall clock expiring while the root model is still sampling stops the episode
with `wall_clock`, exactly as it would inside a cell, and the episode stays in training.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass
from typing import Any

from rlm_env.episode.budget import BudgetLedger
from rlm_env.episode.compaction import Compactor
from rlm_env.episode.config import EpisodeConfig
from rlm_env.episode.parsing import no_code_message, parse_reply
from rlm_env.episode.prompt import build_root_messages, context_meta, describe_cell, format_observation
from rlm_env.episode.record import CellRecord, EpisodeRecord, ModelCall
from rlm_env.episode.subcalls import CHILD_QUESTION, SubCallRouter
from rlm_env.episode.transcript import RootTranscript
from rlm_env.models.base import Completion, Message, ModelClient, as_judge, count_tokens_fallback
from rlm_env.sandbox import Sandbox, SandboxPool, prepare_context
from rlm_env.tasks.base import Task


@dataclass
class StepResult:
    observation: str
    """The next user message (empty when the episode ended on an answer)."""
    done: bool
    stop_reason: str | None = None


class Episode:
    def __init__(
        self,
        task: Task,
        config: EpisodeConfig,
        root_model: ModelClient,
        sub_model: ModelClient | None = None,
        *,
        episode_id: str | None = None,
        ledger: BudgetLedger | None = None,
        parent_call_id: str | None = None,
        sandbox_pool: SandboxPool | None = None,
        rubric: Any | None = None,
        call_prefix: str = "",
        sandbox: Sandbox | None = None,
    ):
        self.task = task
        self.config = config
        self.root_model = root_model
        self.sub_model = sub_model or root_model
        self.episode_id = episode_id or uuid.uuid4().hex[:12]
        self.ledger = ledger or BudgetLedger(config.budget)
        self.depth = self.ledger.depth
        self.parent_call_id = parent_call_id
        self.sandbox_pool = sandbox_pool
        self.rubric = rubric
        self.call_prefix = call_prefix
        """Prefix of this episode's call ids ("child-1/" for the first child), so ids are
        unique across the episode tree."""
        self.current_root_call_id: str | None = None
        self.sandbox: Sandbox | None = sandbox
        self._borrowed_sandbox = sandbox is not None
        """A `Conversation`'s sandbox: used (its handler set to this episode's router), never
        closed here; its contexts are the task's."""
        self.prompt_note: str | None = None
        """Appended to the first user message (a conversation's note about history_N)."""
        self.transcript: RootTranscript | None = None
        self.done = False
        self._started = 0.0
        self.record = EpisodeRecord(
            episode_id=self.episode_id,
            depth=self.depth,
            task=task.describe(),
            config=config.model_dump(mode="json"),
        )
        self.router = SubCallRouter(self, self._run_child)
        self.compactor = Compactor(self)
        """Root-history compaction (a no-op unless `config.compaction.enabled`)."""

    # -- lifecycle ------------------------------------------------------------------------------
    async def start(self) -> list[Message]:
        """Prepare the context and the sandbox; return the root model's first messages."""
        self._started = time.monotonic()
        self.record.started_at = time.time()
        if self.sandbox is not None:  # borrowed: its contexts are prepared already
            prepared, more = self.sandbox.context, self.sandbox.more_contexts
        else:
            prepared, *rest = await asyncio.gather(
                *(
                    asyncio.to_thread(prepare_context, c)
                    for c in (self.task.context, *self.task.more_contexts)
                )
            )
            more = tuple(rest)
        meta = context_meta(prepared)
        self.record.context_meta = meta
        more_metas = [context_meta(c) for c in more]
        if more_metas:
            self.record.contexts_meta = [meta, *more_metas]
        try:
            if self.sandbox is not None:
                self.sandbox.handler = self.router
            elif self.sandbox_pool is not None:
                self.sandbox = await self.sandbox_pool.acquire(prepared, self.router, more)
            else:
                self.sandbox = await Sandbox.start(self.config.sandbox, prepared, self.router, more)
        except Exception as e:  # noqa: BLE001 - any failure to start is the environment's
            self.flag_infra(f"sandbox failed to start: {type(e).__name__}: {e}")
            self.done = True
            self.record.stop_reason = "sandbox_error"
            return []
        # (sandbox hardening, issue 13) A child's context is its parent's one-off prompt: remove
        # its file from the shared store when the child's sandbox closes.
        self.sandbox.discard_context_on_close = self.depth > 0
        self.record.sandbox_mode = self.sandbox.mode
        self.record.flags.sandbox_mode_warning = self.sandbox.mode_warning
        messages = build_root_messages(self.task.question, meta, self.config, more_metas)
        if self.prompt_note:
            messages[-1]["content"] += "\n\n" + self.prompt_note
        tokenizer = getattr(self.root_model, "tokenizer", None)
        if not getattr(self.root_model, "supports_token_prompts", False):
            tokenizer = None
        self.transcript = RootTranscript(messages, tokenizer)
        return list(messages)

    async def run(self) -> EpisodeRecord:
        """Drive the episode with the root model until it stops; return the record."""
        if self.transcript is None and not self.done:
            await self.start()
        while not self.done:
            reason = self._pre_call_stop_reason()
            # Compact only when the window is all that stands in the way (never before a stop).
            if reason in (None, "context_window") and await self.compactor.maybe_compact():
                reason = self._pre_call_stop_reason()
            if self.done:  # the summary call hit the wall clock or an engine failure
                break
            if reason:
                return await self.finish(reason)
            completion = await self._call_root()
            if completion is None:
                return await self.finish(self.record.stop_reason or "model_error")
            result = await self.step(completion)
            if result.done:
                break
        return await self.finish(self.record.stop_reason or "answer")

    async def step(self, reply: Completion | str) -> StepResult:
        """Apply one root reply. Text replies (from a person, an adapter) are wrapped as-is."""
        if self.done:
            raise RuntimeError("step() called on a finished episode")
        assert self.transcript is not None and self.sandbox is not None
        if isinstance(reply, str):
            reply = self._record_external_reply(reply)
        turn = self.ledger.root_turns
        self.transcript.add_reply(reply)
        if reply.finish_reason == "length" and self.config.stop_on_truncated_reply:
            return self._end("truncated_reply")
        parsed = parse_reply(reply.text, self.config.code_fence_languages)
        sections: list[str] = []
        answer_state = None
        for index, code in enumerate(parsed.code_blocks):
            try:
                result = await self.sandbox.run_cell(code)
            except Exception as e:  # noqa: BLE001 - the sandbox itself broke: infra, not the model
                self.flag_infra(f"sandbox failed while running a cell: {type(e).__name__}: {e}")
                return self._end("sandbox_error")
            self.record.cells.append(
                CellRecord(
                    turn=turn,
                    index=index,
                    code=code,
                    output=result.output,
                    error=result.error,
                    duration_s=round(result.duration_s, 5),
                    truncated=result.truncated,
                    chars_cut=result.chars_cut,
                    timed_out=result.timed_out,
                    worker_restarted=result.worker_restarted,
                    exit_signal=result.exit_signal,
                    oom_killed=result.oom_killed,
                    protocol_violation=result.protocol_violation,
                )
            )
            # A SIGKILL nobody can attribute may be the host's OOM killer or an operator; one the
            # sandbox's own memory cgroup sent is the model's memory use and is not suspected.
            if result.exit_signal == 9 and not result.oom_killed:
                self.record.flags.infra_suspected.append(
                    f"turn {turn}, block {index + 1}: the REPL worker was killed by SIGKILL"
                )
            sections.append(describe_cell(index, len(parsed.code_blocks), result))
            answer_state = result.answer
        if answer_state is not None:
            if answer_state.ready:
                self._set_answer("confirmed", answer_state.content, answer_state.via)
                return self._end("answer")
            if answer_state.error:
                sections.append(f"[answer not accepted] {answer_state.error}")
        if not parsed.code_blocks:
            if parsed.text_final is not None:
                self._set_answer("fallback_text", parsed.text_final, "text_FINAL")
                return self._end("answer")
            if parsed.text_final_var is not None:
                found, value = await self.sandbox.lookup_variable(parsed.text_final_var)
                if found:
                    self._set_answer("fallback_text", value, "text_FINAL_VAR")
                    return self._end("answer")
                sections.append(f"FINAL_VAR: no variable named {parsed.text_final_var!r} in the REPL.")
            else:
                sections.append(no_code_message(parsed))
        elif parsed.unclosed_repl_block:
            sections.append("(An unclosed ```repl block at the end of your reply was not run.)")
        turns_left = self.config.budget.max_root_turns - self.ledger.root_turns
        observation = format_observation(sections, turns_left)
        self.transcript.add_observation(observation)
        return StepResult(observation, done=False)

    async def finish(self, stop_reason: str) -> EpisodeRecord:
        """Close the sandbox, settle the answer and rewards; idempotent."""
        if self.record.stop_reason is None:
            self.record.stop_reason = stop_reason  # type: ignore[assignment]
        self.done = True
        if self.record.answer.status == "none" and self.sandbox is not None:
            await self._extract_answer()
        await self.close()
        flags = self.record.flags
        flags.model_failure = self.record.answer.status == "none" and not flags.infra_failure
        self.record.budget = self.ledger.snapshot()
        if self.transcript is not None:
            self.compactor.store(self.record, self.transcript)
            self.record.store_root_prompts_once()
        self.record.wall_time_s = round(time.monotonic() - self._started, 4) if self._started else 0.0
        if self.rubric is not None and not self.record.rewards:
            self.record.rewards = await self.rubric.score(
                self.record, self.task, judge=as_judge(self.sub_model)
            )
        return self.record

    async def close(self) -> None:
        if self.sandbox is not None:
            sandbox, self.sandbox = self.sandbox, None
            if not self._borrowed_sandbox:
                await sandbox.close()

    async def __aenter__(self) -> Episode:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- used by the router and adapters ------------------------------------------------------
    def flag_infra(self, message: str) -> None:
        self.record.flags.infra_failure = True
        self.record.flags.infra_errors.append(message)

    @property
    def messages(self) -> list[Message]:
        return list(self.transcript.messages) if self.transcript else []

    # -- internals ------------------------------------------------------------------------------
    def _pre_call_stop_reason(self) -> str | None:
        assert self.transcript is not None
        return self.ledger.root_stop_reason(
            self.transcript.prompt_length(), self.config.root_sampling.max_tokens
        )

    async def _call_root(self) -> Completion | None:
        """One root turn. None when it failed; the stop reason is set then (the wall clock or
        the context window: the model's budget; anything else: the infrastructure's)."""
        assert self.transcript is not None
        call_id = f"{self.call_prefix}root-{self.ledger.root_turns}"
        sampling = self.config.root_sampling.to_params()
        room = self.config.budget.context_window - self.transcript.prompt_length()
        sampling = sampling.replace(max_tokens=max(1, min(sampling.max_tokens, room)))
        started = time.monotonic()
        try:
            async with asyncio.timeout(max(0.0, self.ledger.pool.seconds_left())):
                completion = await self.root_model.generate(
                    self.transcript.messages,
                    sampling,
                    prompt_token_ids=self.transcript.prompt_token_ids(),
                    session_id=self.episode_id,
                )
        except Exception as e:  # noqa: BLE001 - sorted below: the model's budget, or infrastructure
            self.record.model_time_s += time.monotonic() - started
            if isinstance(e, TimeoutError) and self.ledger.pool.seconds_left() <= 0:
                reason, message = "wall_clock", "stopped: the episode's wall-clock budget ran out mid-call"
            elif getattr(e, "infra", True) is False:  # PromptTooLong: the transcript outgrew the window
                reason, message = "context_window", f"{type(e).__name__}: {e}"
            else:
                reason, message = "model_error", f"{type(e).__name__}: {e}"
                self.flag_infra(f"root model call {call_id} failed: {message}")
            self.record.stop_reason = reason  # type: ignore[assignment]
            self.record.calls.append(
                ModelCall(
                    id=call_id,
                    role=self._role(),
                    depth=self.depth,
                    parent_id=self.parent_call_id,
                    error=message,
                    finish_reason="error",
                )
            )
            return None
        self.record.model_time_s += time.monotonic() - started
        self._append_root_call(call_id, completion)
        return completion

    def _record_external_reply(self, text: str) -> Completion:
        completion = Completion(text=text, finish_reason="stop", model="external")
        self._append_root_call(f"{self.call_prefix}root-{self.ledger.root_turns}", completion)
        return completion

    def _append_root_call(self, call_id: str, c: Completion) -> None:
        assert self.transcript is not None
        prompt_tokens = c.num_prompt_tokens or self.transcript.prompt_length()
        completion_tokens = c.num_completion_tokens or count_tokens_fallback(c.text)
        self.ledger.add_root_call(prompt_tokens, completion_tokens)
        self.current_root_call_id = call_id
        self.record.calls.append(
            ModelCall(
                id=call_id,
                role=self._role(),
                depth=self.depth,
                parent_id=self.parent_call_id,
                num_messages=len(self.transcript.messages),
                segment=self.compactor.segment,
                completion_text=c.text,
                prompt_token_ids=c.prompt_token_ids,
                completion_token_ids=c.completion_token_ids,
                logprobs=c.logprobs,
                finish_reason=c.finish_reason,
                model=c.model,
                weight_version=c.weight_version,
                checkpoint=c.checkpoint,
                checkpoint_changed=c.checkpoint_changed,
                replica=c.replica,
                latency_s=round(c.latency_s, 4),
                num_prompt_tokens=prompt_tokens,
                num_completion_tokens=completion_tokens,
            )
        )

    async def _extract_answer(self) -> None:
        """A run that hit its limits with an answer written into `answer["content"]` but never
        confirmed: keep it, marked as extracted (never as confirmed)."""
        try:
            found, value = await self.sandbox.lookup_variable("answer")
        except Exception:  # noqa: BLE001 - extraction is best effort; the stop reason stands
            return
        if found and isinstance(value, dict) and value.get("content") is not None:
            self._set_answer("extracted", value["content"], "answer_dict")

    def _role(self) -> str:
        return "root" if self.depth == 0 else "child"

    def _set_answer(self, status: str, content: Any, via: str | None) -> None:
        self.record.answer.status = status  # type: ignore[assignment]
        self.record.answer.content = content
        self.record.answer.via = via

    def _end(self, reason: str) -> StepResult:
        self.record.stop_reason = reason  # type: ignore[assignment]
        self.done = True
        return StepResult("", done=True, stop_reason=reason)

    async def _run_child(self, prompt: str) -> str:
        """rlm_query: a child RLM whose context is the prompt, spending the shared budget."""
        index = len(self.record.children) + 1
        child_task = Task(id=f"{self.task.id}/child-{index}", context=prompt, question=CHILD_QUESTION)
        child = Episode(
            child_task,
            self.config,
            self.root_model,
            self.sub_model,
            episode_id=f"{self.episode_id}/child-{index}",
            ledger=self.ledger.child(),
            parent_call_id=self.current_root_call_id,
            call_prefix=f"{self.call_prefix}child-{index}/",
        )
        try:
            record = await child.run()
        finally:
            child.ledger.settle_child()  # the unspent allotment returns, or is charged (config)
        record.budget = child.ledger.snapshot()
        self.record.children.append(record)
        self.ledger.add_sub_tokens(  # the child's own root tokens count in this subtree and the pool
            record.budget.get("root_prompt_tokens", 0), record.budget.get("root_completion_tokens", 0)
        )
        if record.flags.infra_failure:
            self.flag_infra(f"child episode {index} hit an infrastructure failure")
        if record.answer.status == "none":
            raise RuntimeError(f"the child RLM ended without an answer (stop reason: {record.stop_reason})")
        content = record.answer.content
        return content if isinstance(content, str) else str(content)

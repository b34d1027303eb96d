"""Multi-question conversations: one REPL kept across several questions, for chat-style use.

A `Conversation` owns one sandbox on its contexts (`context`, or `context_0 ... context_N`) and
runs each question asked of it as an ordinary `Episode` on that sandbox, so everything an
episode guarantees holds per question (budgets, recording, failure sorting), and:

- variables survive between questions: the worker is the same process (unless a crash
  restarted it; that episode's cells then say so, as they always do);
- before question k, the REPL holds `history_0 ... history_{k-1}`, one dict per earlier
  question: {"question", "answer" (the settled answer content, or None), "stop_reason",
  "messages" (that question's root transcript)}; they are bound again before every question,
  so even a restarted worker has them. The root prompt says they are there;
- the answer state is cleared between questions, so an answer given to question k never
  answers question k+1;
- each question's `EpisodeRecord` carries `conversation_id` and `conversation_index`, and its
  own budget: budgets are per question, not per conversation.

Not guaranteed: the root model does not see earlier transcripts in its own prompt (only
through `history_N` in the REPL): each question starts a fresh root transcript, which keeps the
prompt constant-size however long the conversation grows. Questions run one after another,
never concurrently (`ask` holds a lock).
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from rlm_env.episode.config import EpisodeConfig
from rlm_env.episode.episode import Episode
from rlm_env.episode.record import EpisodeRecord
from rlm_env.models.base import ModelClient
from rlm_env.sandbox import Sandbox, prepare_context
from rlm_env.tasks.base import ContextValue, Task

HISTORY_NOTE = (
    "This is question {index} of a conversation. Your REPL variables from the earlier questions are "
    "still defined, and `history_0` ... `history_{last}` hold them: dicts with keys question, answer, "
    "stop_reason and messages."
)


class Conversation:
    """Question after question on one REPL; see the module docstring. An async context manager."""

    def __init__(
        self,
        context: ContextValue,
        config: EpisodeConfig,
        root_model: ModelClient,
        sub_model: ModelClient | None = None,
        *,
        more_contexts: tuple[ContextValue, ...] = (),
        conversation_id: str | None = None,
        rubric: Any | None = None,
    ):
        self.context, self.more_contexts = context, tuple(more_contexts)
        self.config, self.root_model, self.sub_model, self.rubric = config, root_model, sub_model, rubric
        self.conversation_id = conversation_id or uuid.uuid4().hex[:12]
        self.history: list[dict[str, Any]] = []
        """What `history_N` holds, host-side."""
        self.records: list[EpisodeRecord] = []
        self.sandbox: Sandbox | None = None
        self._lock = asyncio.Lock()

    async def _ensure_sandbox(self) -> Sandbox:
        if self.sandbox is None:
            prepared = await asyncio.gather(
                *(asyncio.to_thread(prepare_context, c) for c in (self.context, *self.more_contexts))
            )
            self.sandbox = await Sandbox.start(self.config.sandbox, prepared[0], None, tuple(prepared[1:]))
        return self.sandbox

    async def ask(
        self, question: str, *, expected_answer: Any = None, scorer: str | None = None
    ) -> EpisodeRecord:
        """Run one question as an episode on the shared REPL; returns its record."""
        async with self._lock:
            index = len(self.records)
            sandbox = await self._ensure_sandbox()
            for i, entry in enumerate(self.history):  # again each time: a restarted worker lost them
                await sandbox.bind_variable(f"history_{i}", entry, reset_answer=i == len(self.history) - 1)
            task = Task(
                id=f"conversation-{self.conversation_id}/q{index}",
                context=self.context,
                question=question,
                expected_answer=expected_answer,
                scorer=scorer,
                more_contexts=self.more_contexts,
            )
            episode = Episode(
                task, self.config, self.root_model, self.sub_model,
                episode_id=f"{self.conversation_id}-q{index}", rubric=self.rubric, sandbox=sandbox,
            )  # fmt: skip
            if index:
                episode.prompt_note = HISTORY_NOTE.format(index=index + 1, last=index - 1)
            episode.record.conversation_id = self.conversation_id
            episode.record.conversation_index = index
            record = await episode.run()
            if sandbox.closed:  # the episode could not use it (never expected): start afresh next time
                self.sandbox = None
            self.records.append(record)
            self.history.append(
                {
                    "question": question,
                    "answer": record.answer.content,
                    "stop_reason": record.stop_reason,
                    "messages": record.root_messages,
                }
            )
            return record

    async def close(self) -> None:
        if self.sandbox is not None:
            sandbox, self.sandbox = self.sandbox, None
            await sandbox.close()

    async def __aenter__(self) -> Conversation:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

"""Root-history compaction: replace earlier root turns by a model-written summary.

Opt-in (`EpisodeConfig.compaction.enabled`). Before a root call whose prompt would take at least
`trigger_fraction` of `budget.context_window`, the `Compactor`:

1. asks a model (the root model itself, or the sub-model) to summarise the turns that will be
   dropped: their messages plus the configured request, as one recorded call with role
   "summary" (`summary-<k>`), sampled with at most `summary_max_tokens`;
2. starts a new root segment: system prompt, the first user message (question and context
   description) followed by the summary, then the last `keep_last_turns` turns verbatim. The
   segment gets a fresh `RootTranscript`, so its token sample starts anew: its loss mask is 1
   only on tokens sampled *in that segment* (kept replies are prompt there, mask 0);
3. records a `Compaction` (where, tokens before and after, the summary call); when the episode
   finishes, each compaction carries its segment's messages and sample.

What is guaranteed: the sandbox is never touched (every REPL variable survives); each segment
is append-only in itself, so every root prompt of a segment is a prefix of that segment's sample
(`EpisodeRecord.call_prompt_ids` finds it through `ModelCall.segment`); the summary's tokens
count against the root token budget (`max_root_tokens`), not against root turns.

What is not: the summary is whatever the model wrote (a tiny model's summary may be useless;
that is the policy's problem and stays in its reward). A segment whose prompt still does not fit
after compaction stops the episode with `context_window` as before. A summary call that fails on
the engine is an infrastructure failure (the episode stops with `model_error`); a summary prompt
the engine refuses as too long is the model's budget (no compaction happens, and the episode
runs on until the window stops it). Compaction happens only when the episode drives its root
model (`Episode.run`); adapters whose agent samples the root itself (gymnasium, SkyRL) manage
their own context. Summary calls are recorded but not turned into training samples.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

from rlm_env.episode.record import Compaction, ModelCall
from rlm_env.episode.transcript import RootTranscript
from rlm_env.models.base import Message, chat_prompt_ids, count_tokens_fallback

if TYPE_CHECKING:
    from rlm_env.episode.episode import Episode
    from rlm_env.episode.record import EpisodeRecord

SUMMARY_HEADER = "Summary of your earlier turns (the REPL still holds every variable):"


class Compactor:
    """Watches one episode's root transcript and compacts it; keeps the finished segments."""

    def __init__(self, episode: Episode):
        self.episode = episode
        self.config = episode.config.compaction
        self.finished: list[RootTranscript] = []
        """Segments before the current one (segment k is `finished[k]`)."""
        self.compactions: list[Compaction] = []

    @property
    def segment(self) -> int:
        """The index of the segment the transcript now holds."""
        return len(self.finished)

    def due(self) -> bool:
        """True when the next root prompt has reached the trigger and there are turns to drop."""
        transcript = self.episode.transcript
        if not self.config.enabled or transcript is None:
            return False
        window = self.episode.config.budget.context_window
        if transcript.prompt_length() < self.config.trigger_fraction * window:
            return False
        return len(self._turn_starts(transcript.messages)) > self.config.keep_last_turns

    async def maybe_compact(self) -> bool:
        """Compact when due; True when a new segment began. On an infrastructure failure of the
        summary call the episode is flagged and marked done (the caller finishes it)."""
        if not self.due():
            return False
        episode = self.episode
        transcript = episode.transcript
        assert transcript is not None
        messages = transcript.messages
        starts = self._turn_starts(messages)
        keep_from = (
            starts[len(starts) - self.config.keep_last_turns]
            if self.config.keep_last_turns
            else len(messages)
        )
        summary = await self._summarise(messages[:keep_from])
        if summary is None:
            return False
        first_user = dict(messages[1])
        first_user["content"] = f"{first_user['content']}\n\n{SUMMARY_HEADER}\n{summary.strip()}"
        new_messages = [dict(messages[0]), first_user] + [dict(m) for m in messages[keep_from:]]
        tokens_before = transcript.prompt_length()
        self.finished.append(transcript)
        episode.transcript = RootTranscript(new_messages, transcript.tokenizer)
        self.compactions.append(
            Compaction(
                at_turn=episode.ledger.root_turns,
                tokens_before=tokens_before,
                tokens_after=episode.transcript.prompt_length(),
                kept_turns=self.config.keep_last_turns,
                summary_call_id=self._summary_call_id(),
            )
        )
        return True

    def store(self, record: EpisodeRecord, current: RootTranscript) -> None:
        """Write every segment into the record: segment 0 as `root_sample`/`root_messages`, the
        others into their compactions; then point root prompts into their segment's sample."""
        segments = self.finished + [current]
        record.root_sample = segments[0].sample
        record.root_messages = [dict(m) for m in segments[0].messages]
        for compaction, transcript in zip(self.compactions, segments[1:], strict=True):
            compaction.sample = transcript.sample
            compaction.messages = [dict(m) for m in transcript.messages]
        record.compactions = list(self.compactions)

    # -- internals ------------------------------------------------------------------------------
    @staticmethod
    def _turn_starts(messages: list[Message]) -> list[int]:
        """Index of each turn's assistant message after the first two (system, first user)."""
        return [i for i, m in enumerate(messages) if i >= 2 and m["role"] == "assistant"]

    def _summary_call_id(self) -> str:
        return f"{self.episode.call_prefix}summary-{len(self.compactions)}"

    async def _summarise(self, dropped: list[Message]) -> str | None:
        """One recorded summary call over the messages to drop; None when it failed."""
        episode = self.episode
        model = episode.root_model if self.config.summarizer == "root" else episode.sub_model
        prompt: list[Message] = [dict(m) for m in dropped] + [{"role": "user", "content": self.config.prompt}]
        tokenizer = getattr(model, "tokenizer", None)
        prompt_ids = None
        if tokenizer is not None and getattr(model, "supports_token_prompts", False):
            prompt_ids = chat_prompt_ids(tokenizer, prompt)
        sampling = episode.config.root_sampling.to_params().replace(max_tokens=self.config.summary_max_tokens)
        call = ModelCall(
            id=self._summary_call_id(),
            role="summary",
            depth=episode.depth,
            parent_id=episode.current_root_call_id,
            segment=self.segment,
            messages=prompt if episode.config.record_sub_messages else None,
        )
        started = time.monotonic()
        try:
            async with asyncio.timeout(max(0.0, episode.ledger.pool.seconds_left())):
                c = await model.generate(
                    prompt, sampling, prompt_token_ids=prompt_ids, session_id=episode.episode_id
                )
        except Exception as e:  # noqa: BLE001 - sorted below, as for a root call
            episode.record.model_time_s += time.monotonic() - started
            call.error, call.finish_reason = f"{type(e).__name__}: {e}", "error"
            episode.record.calls.append(call)
            if isinstance(e, TimeoutError) and episode.ledger.pool.seconds_left() <= 0:
                episode.record.stop_reason = "wall_clock"
                episode.done = True
            elif getattr(e, "infra", True) is not False:  # not PromptTooLong: the engine failed
                episode.flag_infra(f"summary call {call.id} failed: {call.error}")
                episode.record.stop_reason = "model_error"
                episode.done = True
            return None
        episode.record.model_time_s += time.monotonic() - started
        prompt_tokens = c.num_prompt_tokens or (len(prompt_ids) if prompt_ids else 0)
        completion_tokens = c.num_completion_tokens or count_tokens_fallback(c.text)
        # Root-engine spend: it counts against max_root_tokens, but is not a root turn.
        episode.ledger.root_prompt_tokens += prompt_tokens
        episode.ledger.root_completion_tokens += completion_tokens
        call = call.model_copy(
            update=dict(
                completion_text=c.text,
                prompt_token_ids=c.prompt_token_ids or prompt_ids,
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
        episode.record.calls.append(call)
        return c.text

"""A synchronous reset/step face over the async Episode: text in, text out.

This is what the gymnasium adapter (and `rlm-env play`) wraps. The agent is the root model: its
action is one reply text, the observation is the next user message. The episode's coroutines run
on a private event loop in a background thread, so callers need no asyncio.

`step` returns gymnasium's five-tuple: `terminated` when the answer was set, `truncated` when a
limit (turns, tokens, wall clock) or a failure ended the episode; the reward is the rubric's total
on the last step and 0.0 before it.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

from rlm_env.episode.config import EpisodeConfig
from rlm_env.episode.episode import Episode
from rlm_env.episode.record import EpisodeRecord
from rlm_env.models.base import ModelClient
from rlm_env.tasks.base import Task

T = TypeVar("T")


class _LoopThread:
    """One event loop in a daemon thread; `run(coro)` blocks until the coroutine is done."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="rlm-env-loop", daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    def stop(self) -> None:
        if self.loop.is_running():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(timeout=5)
        if not self.loop.is_running():
            self.loop.close()


class TextEpisode:
    """reset(task) -> (observation, info); step(reply) -> (obs, reward, terminated, truncated, info)."""

    def __init__(self, config: EpisodeConfig, sub_model: ModelClient, rubric: Any | None = None):
        self.config = config
        self.sub_model = sub_model
        self.rubric = rubric
        self.episode: Episode | None = None
        self.record: EpisodeRecord | None = None
        self._loop = _LoopThread()

    def reset(self, task: Task, episode_id: str | None = None) -> tuple[str, dict[str, Any]]:
        self._close_episode()
        self.record = None
        self.episode = Episode(
            task,
            self.config,
            root_model=self.sub_model,
            sub_model=self.sub_model,
            episode_id=episode_id,
            rubric=self.rubric,
        )
        messages = self._loop.run(self.episode.start())
        if self.episode.done:
            self.record = self._loop.run(
                self.episode.finish(self.episode.record.stop_reason or "sandbox_error")
            )
            return "", self._info()
        observation = "\n\n".join(m["content"] for m in messages)
        return observation, {**self._info(), "messages": messages}

    def step(self, reply: str) -> tuple[str, float, bool, bool, dict[str, Any]]:
        if self.episode is None or self.record is not None:
            raise RuntimeError("call reset() before step(), and again after the episode ended")
        result = self._loop.run(self.episode.step(reply))
        reason = result.stop_reason
        if not result.done:
            reason = self.episode._pre_call_stop_reason()
        if result.done or reason:
            self.record = self._loop.run(self.episode.finish(reason or "answer"))
            terminated = self.record.stop_reason == "answer"
            reward = float(self.record.rewards.get("reward", 0.0))
            return "", reward, terminated, not terminated, self._info()
        return result.observation, 0.0, False, False, self._info()

    def _info(self) -> dict[str, Any]:
        assert self.episode is not None
        rec = self.record or self.episode.record
        return {
            "episode_id": rec.episode_id,
            "sandbox_mode": rec.sandbox_mode,
            "stop_reason": rec.stop_reason,
            "answer": rec.answer.model_dump(),
            "flags": rec.flags.model_dump(),
            "rewards": dict(rec.rewards),
            "budget": self.episode.ledger.snapshot(),
        }

    def _close_episode(self) -> None:
        if self.episode is not None and self.record is None:
            self._loop.run(self.episode.close())

    def close(self) -> None:
        self._close_episode()
        self._loop.stop()

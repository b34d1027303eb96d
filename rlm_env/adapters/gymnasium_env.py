"""A gymnasium `Env` over one RLM episode: the agent is the root model, text in and text out.

`import rlm_env` registers `rlm_env/RLM-v0` (all settings as keyword arguments) and one id per
task family, `rlm_env/RLM-<family>-v0`, with string entry points, so nothing heavy is imported
until `gymnasium.make`:

    env = gymnasium.make("rlm_env/RLM-niah-v0", lengths=["8k"], sub_model="default")
    obs, info = env.reset(seed=0)          # draws a task; obs = system prompt + first user message
    obs, reward, terminated, truncated, info = env.step(reply)   # one root turn

What each call does and records:
- `reset(seed=, options=)` draws a task: the length from `lengths` and the task seed from the
  env's seeded generator (so `reset(seed=s)` always gives the same task), or takes
  `options={"task": Task}` / `options={"task_seed": int, "length": str}`. It starts a fresh
  sandboxed REPL with `context` bound and returns the root prompt (metadata and question only;
  `info["messages"]` holds it as chat messages, system prompt first).
- `step(reply)` runs every ```repl block of the reply, with `llm_query`/`llm_batch` served by the
  configured `sub_model` engine, and returns the next user message. `terminated` when the answer
  was set, `truncated` when a limit or a failure ended the episode; the reward is the rubric's
  total on the last step and 0.0 before it. On the last step `info["record"]` is the finished
  `EpisodeRecord` (every cell, sub-call, the answer, flags, rewards) and `info["training_exclusion"]`
  says whether a trainer should use it. Earlier infos hold only deterministic counters, so
  `check_env`'s determinism checks hold.
- `close()` closes the sandbox (idempotent); the sub-model engine is shared process-wide
  (`build_model`) and is not shut down by one env.

The observation and action spaces are `AnyText`: a `spaces.Text` whose `contains` accepts any
Python `str` up to `max_length` characters (REPL output can hold any Unicode character, so a
charset would be a lie), and whose `sample()` draws printable ASCII plus newline and tab.

What it cannot do: the agent's replies come as text, so the record has no token ids or
logprobs for root turns (`root_sample.available` is False) unless the caller's policy is one of
our engines driven through `rollouts` instead; a vector env runs its episodes through one
process's engines (SyncVectorEnv) or one engine per worker process (AsyncVectorEnv with a
"default" sub-model starts one vLLM per worker: mind memory). Root-history compaction
(`EpisodeConfig.compaction`) is not applied: the agent owns its own context here, so the record
has no `compactions` and one root segment.
"""

from __future__ import annotations

import string
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from rlm_env.episode import EpisodeConfig, TextEpisode
from rlm_env.tasks.base import Task

SAMPLE_CHARSET = frozenset(string.printable) - frozenset("\x0b\x0c\r")
"""What `AnyText.sample()` draws from: printable ASCII plus newline and tab."""


class AnyText(spaces.Text):
    """Text of any characters, 0..max_length long. `contains` is honest: every `str` in range
    is a member; `sample` draws from printable ASCII plus newline and tab only."""

    def __init__(self, max_length: int, *, seed: int | np.random.Generator | None = None):
        super().__init__(max_length, min_length=0, charset=SAMPLE_CHARSET, seed=seed)

    def contains(self, x: Any) -> bool:
        return isinstance(x, str) and self.min_length <= len(x) <= self.max_length

    def __repr__(self) -> str:
        return f"AnyText(0, {self.max_length})"


class RLMEnv(gym.Env[str, str]):
    """One RLM episode per reset; see the module docstring."""

    metadata = {"render_modes": ["ansi"], "render_fps": 1}

    def __init__(
        self,
        family: str = "niah",
        lengths: list[str | int] | tuple[str | int, ...] = ("8k",),
        split: str = "train",
        dataset: str | None = None,
        sub_model: Any = "default",
        episode_config: EpisodeConfig | dict[str, Any] | None = None,
        rubric: Any | None = None,
        max_observation_chars: int = 200_000,
        max_action_chars: int = 32_768,
        render_mode: str | None = None,
    ):
        from rlm_env.adapters.rollouts import resolve_config

        self.family = family
        self.lengths = [str(x) for x in lengths]
        self.split = split
        self.dataset = dataset
        self.sub_model_spec = sub_model
        self.episode_config = resolve_config(episode_config)
        self.rubric = rubric
        self.render_mode = render_mode
        self.observation_space = AnyText(max_observation_chars)
        self.action_space = AnyText(max_action_chars)
        self._dataset_tasks: list[Task] | None = None
        self._text: TextEpisode | None = None
        self._task: Task | None = None
        self._last_observation = ""
        self._turns = 0

    # -- gymnasium API -------------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[str, dict]:
        super().reset(seed=seed)
        text = self._text_episode()
        self._task = self._draw_task(options or {})
        self._turns = 0
        observation, reset_info = text.reset(self._task, episode_id=_safe_id(self._task.id))
        self._last_observation = observation
        info = self._info()
        # The root prompt as chat messages, for agents that are chat models.
        info["messages"] = [dict(m) for m in reset_info.get("messages", [])]
        return observation, info

    def step(self, action: str) -> tuple[str, float, bool, bool, dict]:
        if self._text is None or self._task is None:
            raise RuntimeError("call reset() before step()")
        if not isinstance(action, str):
            raise TypeError(f"the action is the root model's reply text, got {type(action).__name__}")
        observation, reward, terminated, truncated, _ = self._text.step(action)
        self._turns += 1
        self._last_observation = observation
        return observation, float(reward), bool(terminated), bool(truncated), self._info()

    def render(self) -> str | None:
        if self.render_mode == "ansi":
            return self._last_observation
        return None

    def close(self) -> None:
        if self._text is not None:
            text, self._text = self._text, None
            text.close()

    # -- internals -----------------------------------------------------------------------------
    def _text_episode(self) -> TextEpisode:
        if self._text is None:
            from rlm_env.adapters.rollouts import resolve_model

            sub, _ = resolve_model(self.sub_model_spec, role="sub")
            rubric = self.rubric
            if rubric is None:
                from rewards import Rubric

                rubric = Rubric()
            self._text = TextEpisode(self.episode_config, sub, rubric=rubric)
        return self._text

    def _draw_task(self, options: dict[str, Any]) -> Task:
        if isinstance(options.get("task"), Task):
            return options["task"]
        if self.dataset:
            if self._dataset_tasks is None:
                from rlm_env.tasks.dataset import load_dataset_tasks

                self._dataset_tasks = load_dataset_tasks(self.dataset)
            index = options.get("index")
            if index is None:
                index = int(self.np_random.integers(len(self._dataset_tasks)))
            return self._dataset_tasks[int(index)]
        from rlm_env.tasks import make_tasks

        length = options.get("length") or self.lengths[int(self.np_random.integers(len(self.lengths)))]
        task_seed = options.get("task_seed")
        if task_seed is None:
            task_seed = int(self.np_random.integers(2**31 - 1))
        return make_tasks(self.family, [length], 1, split=self.split, seed=int(task_seed))[0]

    def _info(self) -> dict[str, Any]:
        """Deterministic counters while running; the whole record once the episode ended."""
        assert self._text is not None and self._task is not None
        info: dict[str, Any] = {"task_id": self._task.id, "turn": self._turns}
        record = self._text.record
        episode = self._text.episode
        if episode is not None and record is None:
            info["cells_run"] = len(episode.record.cells)
            info["sub_calls"] = episode.ledger.pool.sub_calls if episode.ledger.pool else 0
            info["sandbox_mode"] = episode.record.sandbox_mode
        if record is not None:
            from rlm_env.adapters.rollouts import training_exclusion

            info["record"] = record.model_copy(deep=True)
            info["stop_reason"] = record.stop_reason
            info["rewards"] = dict(record.rewards)
            info["training_exclusion"] = training_exclusion(record)
        return info


def _safe_id(task_id: str) -> str:
    import re

    return re.sub(r"[^A-Za-z0-9_.:-]+", "_", task_id)

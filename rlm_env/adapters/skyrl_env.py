"""SkyRL: a `skyrl_gym` `BaseTextEnv` around one RLM episode, registered as `rlm_env`.

For users who train on GPU clusters with SkyRL (Ray + vLLM + FSDP): SkyRL's generator samples
the root model and hands each reply to the env; the env runs it in our sandboxed REPL.

    import rlm_env.adapters.skyrl_env          # registers "rlm_env" with skyrl_gym
    env = skyrl_gym.make("rlm_env", env_config={"sub_model": "default"},
                         extras={"task": {"family": "niah", "length": "8k", "seed": 3}})
    messages, info = env.init(prompt)          # our root prompt (metadata + question), as chat
    out = env.step(reply)                      # {"observations", "reward", "done", "metadata"}

A SkyRL dataset row names its task in `extras["task"]` by reference ({"family", "length",
"seed", "split"}, or {"dataset": path, "row": n}), so the context never enters the dataset;
`env_config` holds `sub_model` (a `build_model` spec; "default" starts vLLM on this node) and
`episode` (EpisodeConfig fields).

What it records: `init` starts a fresh bwrap + seccomp REPL with `context` bound and ignores the
dataset's prompt (the RLM root prompt is built from the context's metadata); `step(action)` runs
every ```repl block of the reply with sub-calls on the configured engine and returns the REPL
output as one user message; on the last step `done` is True, the reward is our rubric's total
(`rewards.Rubric`) and `metadata["record"]` is the finished `EpisodeRecord` as JSON (every cell,
sub-call, the answer, flags, `training_exclusion`). `close()` ends the sandbox.

What ours adds over skyrl-gym's own `rlm` env: that env runs model code in the trainer's own
process with restricted builtins (no OS isolation: a model that escapes the builtin filter owns
the worker, its files and network). Ours runs each episode's code in its own bubblewrap
sandbox (no network namespace route out, no host files, its own uid, rlimits, a seccomp filter
against exec/fork/sockets), with sub-calls leaving only as frames over pipes, budgeted and
recorded with token ids, and infrastructure failures kept apart from the model's.

What it cannot do: SkyRL's own trainer needs GPUs, so here the env is driven by hand (the test);
the root tokens SkyRL trains on are SkyRL's own (it samples the root), our record holds the
text of its replies and the sub-calls' token ids. Root-history compaction
(`EpisodeConfig.compaction`) is not applied: SkyRL owns the root's context.
"""

from __future__ import annotations

from typing import Any

from skyrl_gym import register, registry
from skyrl_gym.envs.base_text_env import BaseTextEnv, BaseTextEnvStepOutput, ConversationType

from rlm_env.episode import TextEpisode
from rlm_env.tasks.base import Task

ENV_ID = "rlm_env"


def _plain(value: Any) -> Any:
    """OmegaConf configs (what SkyRL passes) to plain Python values."""
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf

        if isinstance(value, DictConfig | ListConfig):
            return OmegaConf.to_container(value, resolve=True)
    except ImportError:  # pragma: no cover - omegaconf comes with skyrl-gym
        pass
    return value


def task_from_reference(ref: dict[str, Any]) -> Task:
    """The task a dataset row names: {"family", "length", "seed", "split"} or {"dataset", "row"}."""
    if ref.get("dataset"):
        from rlm_env.tasks.dataset import load_dataset_tasks

        return load_dataset_tasks(ref["dataset"])[int(ref.get("row", 0))]
    from rlm_env.tasks import make_tasks

    return make_tasks(
        ref.get("family", "niah"),
        [ref.get("length", "8k")],
        1,
        split=ref.get("split", "train"),
        seed=int(ref.get("seed", 0)),
    )[0]


class RLMTextEnv(BaseTextEnv):
    """One RLM episode per env instance (see the module docstring)."""

    def __init__(self, env_config: Any = None, extras: dict[str, Any] | None = None):
        super().__init__()
        from rlm_env.adapters.rollouts import resolve_config, resolve_model

        config = dict(_plain(env_config) or {})
        extras = dict(_plain(extras) or {})
        task = extras.get("task")
        self.task = task if isinstance(task, Task) else task_from_reference(dict(task or {}))
        self.episode_config = resolve_config(config.get("episode"))
        self.max_turns = self.episode_config.budget.max_root_turns
        sub_model = config.get("sub_model", "default")
        sub, _ = resolve_model(sub_model, role="sub") if isinstance(sub_model, str) else (sub_model, False)
        rubric = config.get("rubric")
        if rubric is None:
            from rewards import Rubric

            rubric = Rubric()
        self._text = TextEpisode(self.episode_config, sub, rubric=rubric)
        self._closed = False

    def init(self, prompt: ConversationType) -> tuple[ConversationType, dict[str, Any]]:
        observation, info = self._text.reset(self.task)
        messages = [dict(m) for m in info.get("messages", [])]
        if not messages:  # the sandbox failed to start: an infrastructure failure
            return [], {"record": self._record_json(), "infra_failure": True}
        return messages, {"task_id": self.task.id, "sandbox_mode": info.get("sandbox_mode")}

    def step(self, action: str) -> BaseTextEnvStepOutput:
        self.turns += 1
        observation, reward, terminated, truncated, _ = self._text.step(action)
        done = bool(terminated or truncated)
        metadata: dict[str, Any] = {"turn": self.turns}
        if done:
            metadata["record"] = self._record_json()
            metadata["stop_reason"] = self._text.record.stop_reason if self._text.record else None
        observations = [] if done else [{"role": "user", "content": observation}]
        return BaseTextEnvStepOutput(
            observations=observations,
            reward=float(reward),
            done=done,
            metadata=metadata,
            postprocessed_action=None,
        )

    def get_metrics(self) -> dict[str, Any]:
        record = self._text.record
        if record is None:
            return {}
        return {
            "correctness": record.rewards.get("correctness", 0.0),
            "answered": float(record.answer.status != "none"),
            "sub_calls": float(record.budget.get("sub_calls", 0)),
            "cells": float(len(record.cells)),
        }

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._text.close()

    def _record_json(self) -> dict[str, Any] | None:
        from rlm_env.adapters.rollouts import training_exclusion

        record = self._text.record
        if record is None:
            return None
        data = record.model_dump(mode="json")
        data["training_exclusion"] = training_exclusion(record)
        return data


if ENV_ID not in registry:
    register(id=ENV_ID, entry_point="rlm_env.adapters.skyrl_env:RLMTextEnv")

"""rlm-env: the Recursive Language Model loop as a reinforcement-learning environment.

`import rlm_env` stays light (no torch, vLLM, verifiers or trainer import): it registers the
gymnasium ids (string entry points) and resolves everything else lazily on first attribute use.

- `rlm_env.rollouts(tasks, model, ...)`: an async iterator of finished `EpisodeRecord`s
  (`rlm_env.adapters.rollouts`).
- `RLMTaskset` and `RLMHarness`: the verifiers 0.4.0 hub entry, so `vf-eval rlm-env ...` works
  (`rlm_env.adapters.verifiers_env`); `__all__` lists exactly these two verifiers classes, as
  verifiers' loader requires, plus `rollouts`.
- `RLMEnv`: the gymnasium env behind `gymnasium.make("rlm_env/RLM-v0")` and
  `rlm_env/RLM-<family>-v0` (`rlm_env.adapters.gymnasium_env`).
- TRL and SkyRL adapters live in `rlm_env.adapters.trl_rollout` and `rlm_env.adapters.skyrl_env`
  (imported explicitly: they pull in their frameworks).
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["RLMHarness", "RLMTaskset", "rollouts"]

_LAZY = {
    "RLMTaskset": "rlm_env.adapters.verifiers_env",
    "RLMHarness": "rlm_env.adapters.verifiers_env",
    "rollouts": "rlm_env.adapters.rollouts",
    "RLMEnv": "rlm_env.adapters.gymnasium_env",
}

GYM_FAMILIES = ("niah", "oolong", "oolong_pairs", "multihop", "codeqa")
"""Task families with their own gymnasium id (kept equal to `rlm_env.tasks.TASK_FAMILIES`,
written out here so registering imports no task code)."""


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'rlm_env' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


def _register_gymnasium() -> None:
    """`rlm_env/RLM-v0` and `rlm_env/RLM-<family>-v0`; idempotent; a no-op without gymnasium."""
    try:
        import gymnasium
    except ImportError:  # gymnasium is a core dependency, but a trimmed install still imports
        return
    entry = "rlm_env.adapters.gymnasium_env:RLMEnv"
    ids: dict[str, dict[str, Any]] = {"rlm_env/RLM-v0": {}}
    ids |= {f"rlm_env/RLM-{family}-v0": {"family": family} for family in GYM_FAMILIES}
    for env_id, kwargs in ids.items():
        if env_id not in gymnasium.registry:
            gymnasium.register(id=env_id, entry_point=entry, kwargs=kwargs)


_register_gymnasium()

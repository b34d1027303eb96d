"""Adapters: the episode as a citizen of other tools' APIs. Each module wraps `rlm_env.episode`
(the one contract) and is imported only when used; the episode never imports them.

| module | what it is |
|---|---|
| `rollouts` | `rollouts(...)`: an async iterator of finished, scored `EpisodeRecord`s |
| `gymnasium_env` | `RLMEnv`, a gymnasium Env (registered as `rlm_env/RLM-v0` by `import rlm_env`) |
| `verifiers_env` | `RLMTaskset` + `RLMHarness`, the verifiers 0.4.0 hub entry (`vf-eval rlm-env`) |
| `trl_rollout` | `RLMRolloutFunc`, a TRL `GRPOTrainer` `rollout_func` with weight sync into our engines |
| `skyrl_env` | `RLMTextEnv`, a skyrl-gym `BaseTextEnv` (registered as `rlm_env`) |
"""

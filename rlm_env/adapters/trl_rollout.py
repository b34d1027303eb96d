"""TRL `GRPOTrainer` adapter: a `rollout_func` that runs one RLM episode per prompt on our engines.

    rollout = RLMRolloutFunc(tasks, engine)          # engine: a started VLLMRayClient (or any
    trainer = GRPOTrainer(model, reward_funcs=rollout.reward_funcs(),   # client with a tokenizer)
                          train_dataset=rollout.dataset(), rollout_func=rollout,
                          args=GRPOConfig(use_vllm=False, num_generations=2, ...))

What TRL gets back, one entry per prompt it sent (its `num_generations` repeats included):
- `prompt_ids`: the root model's first prompt (system + first user message) exactly as the
  engine consumed it; the dataset's prompt column holds only the task id (a reference: the
  context never enters TRL).
- `completion_ids`: the whole multi-turn root transcript after that first prompt (replies,
  chat-template tokens and REPL observations), exactly the ids the episode recorded (no
  re-tokenization); `env_mask` is its loss mask: 1 on tokens the model sampled, 0 on
  observation and template tokens; `logprobs` the sampling logprobs (0.0 on masked-out tokens).
- Root-history compaction (`EpisodeConfig.compaction`): TRL takes one completion per prompt,
  so a compacted episode gives TRL its first root segment (the one that starts with the task's
  prompt); the later segments (`record.root_samples()[1:]`, each a sample with the same
  advantage) are in `rlm_record` for trainers that take several sequences per episode
  (`training.samples`). Dropping them loses data but biases nothing.
- `rlm_rewards` (one dict per prompt) and `rlm_record` (the `EpisodeRecord`) reach reward
  functions as keyword arguments. `reward_funcs()` returns TRL-style functions, one per rubric
  component (`rewards.Rubric`: correctness, format, cost), each returning None for an episode
  `training_exclusion()` rejects (an infrastructure failure, say), so TRL leaves it out of the
  group statistics; such an episode's `env_mask` is all zeros too.

Weight sync: with `use_vllm=False` TRL syncs nothing, so before each batch whose
`trainer.state.global_step` differs from the last synced step, the adapter merges the LoRA
adapter (if any) into a copy of the weights, saves them as `model.safetensors` (bf16, the
checkpoint's own tensor names) under `sync_dir` (default /dev/shm) and calls
`engine.reload_weights(dir)`; every later completion carries the new `weight_version`.

Sampling: each root call gets its own seed (episode id, turn, call number; `SeededRoot`),
because engine replicas that share a seed return identical samples for a GRPO group's identical
prompts (measured: zero reward variance, zero loss, on 2 replicas). Sub-calls are not seeded.

What it cannot do: TRL recomputes logprobs under its own model and, without `use_vllm`,
applies no importance correction from ours (the engine's bf16 numbers differ slightly from the
trainer's); each `rollout_func` call runs its episodes to the end before TRL trains (no
overlap of generation and training); a completion longer than TRL's `max_completion_length`
is not cut by TRL on this path, so bound episodes with the episode budget (turns, context window).
Root and sub-calls share the engine unless `sub_model` names another.
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import os
import shutil
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from rlm_env.adapters.rollouts import resolve_config, rollouts, training_exclusion
from rlm_env.episode import EpisodeConfig, EpisodeRecord
from rlm_env.tasks.base import Task

REWARD_COMPONENTS = ("correctness", "format", "cost")


class RLMRolloutFunc:
    """Callable `rollout_func(prompts, trainer) -> dict` for `trl.GRPOTrainer`."""

    def __init__(
        self,
        tasks: Iterable[Task],
        engine: Any,
        *,
        sub_model: Any | None = None,
        config: EpisodeConfig | dict[str, Any] | None = None,
        rubric: Any | None = None,
        concurrency: int = 4,
        sync_dir: str | os.PathLike[str] | None = None,
        sync_weights: bool = True,
        seed: int = 0,
    ):
        self.tasks = {task.id: task for task in tasks}
        self.engine = engine
        self.sub_model = sub_model
        self.config = resolve_config(config)
        self.rubric = rubric
        self.concurrency = concurrency
        self.sync_dir = Path(sync_dir or f"/dev/shm/rlm-trl-sync-{os.getpid()}")
        self.sync_weights = sync_weights
        self.last_synced_step: int | None = None
        self.synced_versions: list[int] = []
        """Engine weight versions after each sync, in order (for logs and tests)."""
        self.records: list[EpisodeRecord] = []
        """Every record of the last call, in prompt order."""
        self.seed = seed
        self.calls = 0

    # -- what GRPOTrainer needs ---------------------------------------------------------------
    def dataset(self, repeat: int = 1) -> Any:
        """A `datasets.Dataset` whose `prompt` column holds task ids (references, not contexts)."""
        from datasets import Dataset

        return Dataset.from_dict({"prompt": [task_id for task_id in self.tasks for _ in range(repeat)]})

    def reward_funcs(self) -> list[Callable[..., list[float | None]]]:
        """One TRL reward function per rubric component (weight them with GRPOConfig.reward_weights)."""
        return [_component_reward(name) for name in REWARD_COMPONENTS]

    def __call__(self, prompts: list[Any], trainer: Any) -> dict[str, list[Any]]:
        if self.sync_weights and trainer is not None:
            step = int(trainer.state.global_step)
            if self.last_synced_step is None and step == 0:
                self.last_synced_step = 0  # a fresh run: the engine already holds the initial policy
            elif step != self.last_synced_step:  # trained since, or resumed from a checkpoint
                self.sync(trainer)
                self.last_synced_step = step
        tasks = [self._task(prompt) for prompt in prompts]
        records = asyncio.run(self._run(tasks))
        self.records = records
        tokenizer = self.engine.tokenizer
        out: dict[str, list[Any]] = {
            "prompt_ids": [],
            "completion_ids": [],
            "logprobs": [],
            "env_mask": [],
            "rlm_rewards": [],
            "rlm_record": [],
        }
        for record in records:
            prompt_ids, completion_ids, logprobs, mask = split_root_sample(record, tokenizer)
            out["prompt_ids"].append(prompt_ids)
            out["completion_ids"].append(completion_ids)
            out["logprobs"].append(logprobs)
            out["env_mask"].append(mask)
            excluded = training_exclusion(record)
            out["rlm_rewards"].append(None if excluded else dict(record.rewards))
            out["rlm_record"].append(record)
        return out

    # -- weight sync --------------------------------------------------------------------------
    def sync(self, trainer: Any) -> int:
        """Save the trainer's current weights (LoRA merged) and reload them into the engine."""
        model = (
            trainer.accelerator.unwrap_model(trainer.model)
            if hasattr(trainer, "accelerator")
            else trainer.model
        )
        path = save_merged_weights(model, self.sync_dir)
        reload = self.engine.reload_weights
        kwargs = {}
        if "checkpoint" in inspect.signature(reload).parameters:
            kwargs["checkpoint"] = f"trl/step-{trainer.state.global_step}"
        version = asyncio.run(reload(str(path), **kwargs))
        self.synced_versions.append(int(version))
        return int(version)

    def cleanup(self) -> None:
        """Remove the synced weights from /dev/shm."""
        shutil.rmtree(self.sync_dir, ignore_errors=True)

    # -- internals ----------------------------------------------------------------------------
    def _task(self, prompt: Any) -> Task:
        key = prompt if isinstance(prompt, str) else _last_user_text(prompt)
        try:
            return self.tasks[key]
        except KeyError:
            raise KeyError(f"prompt {key!r} is not a task id this rollout function was given") from None

    async def _run(self, tasks: list[Task]) -> list[EpisodeRecord]:
        # Repeats of one task (a GRPO group) need distinct episode ids: tag them by position.
        tagged = [_Tagged(task, index) for index, task in enumerate(tasks)]
        by_index: dict[int, EpisodeRecord] = {}
        self.calls += 1
        async for record in rollouts(
            tagged,
            SeededRoot(self.engine, salt=f"{self.seed}/{self.calls}"),
            sub_model=self.sub_model,
            config=self.config,
            rubric=self.rubric,
            concurrency=self.concurrency,
        ):
            by_index[int(record.episode_id.rsplit(":", 1)[1])] = record
        return [by_index[i] for i in range(len(tasks))]


class SeededRoot:
    """A client wrapper giving every root call its own sampling seed, derived from the episode id,
    the turn and a salt (the call number).

    Why: engine replicas started with the same seed sample identical continuations for identical
    prompts, so the members of a GRPO group (same prompt, routed to different replicas) would come
    back as copies with zero advantage. Seeds per request make group members differ and a batch
    reproducible. Sub-calls (no session id) keep the engine's own randomness. Everything else
    (tokenizer, reload_weights, weight_version, ...) is the wrapped client's.
    """

    def __init__(self, client: Any, salt: str):
        self._client = client
        self._salt = salt

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    async def generate(
        self, messages: Any, sampling: Any, *, prompt_token_ids: Any = None, session_id: Any = None
    ):
        if sampling.seed is None and session_id is not None:
            digest = hashlib.blake2b(f"{self._salt}\0{session_id}\0{len(messages)}".encode(), digest_size=4)
            sampling = sampling.replace(seed=int.from_bytes(digest.digest(), "big") & 0x7FFFFFFF)
        return await self._client.generate(
            messages, sampling, prompt_token_ids=prompt_token_ids, session_id=session_id
        )

    async def close(self) -> None:  # the wrapped client belongs to the caller
        return None


class _Tagged(Task):
    """A task whose id carries its batch position (so the record can be put back in order)."""

    def __init__(self, task: Task, index: int):
        super().__init__(
            id=f"{task.id}:{index}",
            context=task.context,
            question=task.question,
            expected_answer=task.expected_answer,
            scorer=task.scorer,
            metadata=dict(task.metadata),
        )
        self.group_id = task.id


def split_root_sample(
    record: EpisodeRecord, tokenizer: Any
) -> tuple[list[int], list[int], list[Any], list[int]]:
    """(prompt_ids, completion_ids, logprobs, env_mask) from the record's root transcript.

    The prompt is the first root call's prompt; everything after it in the first root segment
    (`record.root_sample`) is the completion. An
    episode without engine token ids (it failed before the first call, or a non-token engine)
    gets its task question as the prompt and one masked-out end token as the completion.
    """
    sample = record.root_sample
    first = next(
        (c for c in record.calls if c.role == "root" and c.segment == 0 and record.call_prompt_ids(c)), None
    )
    first_prompt = record.call_prompt_ids(first) if first is not None else None
    if sample.available and sample.token_ids and first_prompt:
        n = len(first_prompt)
        if sample.token_ids[:n] == first_prompt and len(sample.token_ids) > n:
            excluded = training_exclusion(record) is not None
            mask = [0] * (len(sample.token_ids) - n) if excluded else list(sample.loss_mask[n:])
            logprobs = [0.0 if x is None else float(x) for x in sample.logprobs[n:]]
            return list(sample.token_ids[:n]), list(sample.token_ids[n:]), logprobs, mask
    prompt = tokenizer.encode(str(record.task.get("question", "")), add_special_tokens=False) or [0]
    eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0
    return prompt, [eos], [0.0], [0]


def _component_reward(name: str) -> Callable[..., list[float | None]]:
    def reward(
        prompts: list[Any], completions: list[Any], rlm_rewards: list[Any], **kwargs: Any
    ) -> list[float | None]:
        return [None if r is None else float(r.get(name, 0.0)) for r in rlm_rewards]

    reward.__name__ = f"rlm_{name}"
    return reward


def _last_user_text(messages: Any) -> str:
    if isinstance(messages, list) and messages and isinstance(messages[-1], dict):
        return str(messages[-1].get("content", ""))
    return str(messages)


def save_merged_weights(model: Any, directory: str | os.PathLike[str]) -> Path:
    """Write `model`'s weights, LoRA merged, as `directory/model.safetensors` (bf16, plain
    checkpoint names, tied lm_head dropped) without changing the model. Returns the directory."""
    import torch
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    merged = hasattr(model, "merge_adapter") and hasattr(model, "unmerge_adapter")
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if merged:
        model.merge_adapter()
    try:
        with torch.no_grad():
            state = {}
            for key, tensor in base.state_dict().items():
                if "lora_" in key or "modules_to_save" in key:
                    continue
                state[key.replace(".base_layer.", ".")] = (
                    tensor.detach().to(torch.bfloat16).contiguous().clone()
                )
    finally:
        if merged:
            model.unmerge_adapter()
    if getattr(getattr(base, "config", None), "tie_word_embeddings", False):
        state.pop("lm_head.weight", None)
    tmp = directory / "model.safetensors.tmp"
    save_file(state, str(tmp), metadata={"format": "pt"})
    os.replace(tmp, directory / "model.safetensors")
    return directory

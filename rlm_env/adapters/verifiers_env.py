"""The verifiers 0.4.0 (`verifiers.v1`) hub entry: `vf-eval rlm-env ...`.

verifiers turns the id `rlm-env` into the module `rlm_env`, whose `__all__` lists exactly one
`vf.Taskset` subclass (`RLMTaskset`) and a `vf.Harness` subclass (`RLMHarness`, the default
harness); both resolve lazily, so `import rlm_env` stays light.

- `RLMTaskset` yields one `RLMTask` per (length, seed) of a generated family, or per row of a
  user dataset (`RLMTasksetConfig`: family, lengths, count, split, seed, dataset). `TaskData`
  is written into every trace, so it carries the context **by reference** (family, split,
  length, seed; or dataset path and row) plus the question and expected answer; the context is
  materialised in the host process at `setup` (and cached), never inlined.
- `RLMHarness` runs our RLM episode in process (`NEEDS_CONTAINER = False`: the REPL runs in
  our own bwrap + seccomp sandbox, not in verifiers' runtime, which it never uses). Every root
  call goes through the rollout's interception `endpoint` with its `secret`, so verifiers
  records it in the trace. Sub-calls (`llm_query`, `llm_batch`) go through the endpoint
  too by default (`sub_model = "endpoint"`; each is then its own branch in the trace), or to
  one of our engines by spec (`--env.agent.harness.sub-model default`), outside the trace.
  The whole `EpisodeRecord` (cells, sub-calls with their token ids, answer, flags, budget) is
  stored in `trace.info["rlm_record"]`: the same record `training/` consumes. Our client asks
  the endpoint for vLLM's `return_token_ids`, which the default eval client relays, so every
  root call in the record carries the engine's prompt and sampled ids and logprobs, and
  `trace.info["rlm_tokens"]` holds the root transcript as one sequence with its loss mask
  (`token_view`; one per root segment under `segments` when the history was compacted).
- Rewards come from `rewards/`: `RLMTask`'s `@vf.reward` methods (`correctness` weight 1;
  `format` and `cost` weight 0, logged) and `@vf.metric`s re-score the stored record with the
  project's `Rubric`, so verifiers' numbers and ours agree.
- An infrastructure failure inside the episode (the endpoint refused, the sandbox broke) is
  raised as `vf.HarnessError`: verifiers then marks the rollout errored and it is not scored,
  the same "not the model's fault" rule as `record.training_exclusion()`.

With `--client.type train` verifiers itself tokenizes and records token ids in the trace's
nodes, through vLLM's `/inference/v1/generate`; with vLLM 0.32 (what runs here) that fails:
vLLM answers logprobs as `{"token_id": N}` while verifiers 0.4.0's `renderers` 0.1.12 expects
`{"token": "token_id:N"}` ("MalformedGenerateResponseError"). The eval client works, and the
token view above does not depend on it.

What it cannot do: vf-eval's remote runtimes (prime, docker) are not used (the episode's sandbox
is ours, in the host process), so a hub deployment must allow an in-process harness; the
built-in `llm_judge` scorer needs a judge model the rewards do not get here (use it through
`rlm-env eval`). Root turns through the chat endpoint cannot feed our token-in transcript, so
`rlm_record.root_sample` is not built here; the trace's own token ids (train client) are the
training view.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterator
from typing import Any

import verifiers.v1 as vf
from pydantic import Field

from rlm_env.episode.config import EpisodeConfig
from rlm_env.tasks.base import Task as RLMTaskSpec


class RLMTasksetConfig(vf.TasksetConfig):
    """Which tasks load (`--env.taskset.<field>`)."""

    family: str = "niah"
    """Generated task family: niah, oolong, oolong_pairs, multihop, codeqa (ignored with `dataset`)."""
    lengths: list[str] = Field(default_factory=lambda: ["8k"])
    """Context lengths in tokens, e.g. ["8k", "1M"]."""
    count: int = Field(8, gt=0)
    """Tasks per length (seeds seed .. seed+count-1); for a dataset, the most rows read."""
    split: str = "test"
    """Split of the generated family (or the dataset's `split` field / DatasetDict part)."""
    seed: int = 0
    """First task seed."""
    dataset: str | None = None
    """A JSONL / Parquet file or saved HF dataset folder of user tasks (see rlm_env.tasks.dataset)."""


class RLMTaskData(vf.TaskData):
    """A task by reference: enough to regenerate or re-read its context, never the context."""

    family: str | None = None
    split: str = "test"
    length: int | None = None
    """Context length in tokens (generated tasks)."""
    seed: int | None = None
    dataset: str | None = None
    row: int | None = None
    """Row number in `dataset` (0-based, after the split filter)."""
    answer: Any = None
    """Expected answer (None for unlabeled data)."""
    scorer: str | None = None


@functools.lru_cache(maxsize=8)
def _dataset_tasks(path: str, split: str | None) -> tuple[RLMTaskSpec, ...]:
    from rlm_env.tasks.dataset import iter_dataset_tasks

    return tuple(iter_dataset_tasks(path, split=split))


def materialise(data: RLMTaskData) -> RLMTaskSpec:
    """The full task (context included) a `RLMTaskData` refers to; cached per process."""
    return _materialise(data.id, data.family, data.split, data.length, data.seed, data.dataset, data.row)


@functools.lru_cache(maxsize=64)
def _materialise(
    task_id: str | None,
    family: str | None,
    split: str,
    length: int | None,
    seed: int | None,
    dataset: str | None,
    row: int | None,
) -> RLMTaskSpec:
    if dataset is not None:
        return _dataset_tasks(dataset, split or None)[row or 0]
    from rlm_env.tasks import make_tasks

    if family is None or length is None or seed is None:
        raise vf.TaskError(f"task {task_id!r} names neither a dataset row nor a family/length/seed")
    return make_tasks(family, [length], 1, split=split, seed=seed)[0]


def _record(trace: vf.Trace) -> Any:
    from rlm_env.episode import EpisodeRecord

    data = trace.info.get("rlm_record")
    return EpisodeRecord.model_validate(data) if data is not None else None


def token_view(record: Any) -> dict[str, Any] | None:
    """The root transcript as one token sequence with a loss mask, from the engine's own ids.

    Through the chat endpoint each root call reports the prompt ids the server rendered and the
    ids it sampled (vLLM's `return_token_ids`); call k+1's prompt should start with call k's
    prompt + sampled ids. Where it does, the sequence grows append-only (mask 1 on sampled ids,
    0 on everything else); where the server's re-rendering differs from what was sampled
    (retokenization drift), the sequence restarts from the engine's prompt and `consistent`
    is False, so a trainer can drop it. None when the endpoint returned no token ids.

    A compacted episode (`record.compactions`) has one sequence per root segment: the top-level
    fields are segment 0's, and `segments` lists every segment's view in order (one entry when
    nothing was compacted); a new segment starting afresh is not drift.
    """
    roots = [c for c in record.calls if c.role == "root" and c.error is None]
    if not roots or any(record.call_prompt_ids(c) is None or c.completion_token_ids is None for c in roots):
        return None
    segments: list[dict[str, Any]] = []
    for segment in sorted({c.segment for c in roots}):
        segments.append(_segment_view(record, [c for c in roots if c.segment == segment]))
    return {**segments[0], "segments": segments}


def _segment_view(record: Any, roots: list[Any]) -> dict[str, Any]:
    ids: list[int] = []
    mask: list[int] = []
    logprobs: list[float] = []
    consistent = True
    for call in roots:
        prompt = record.call_prompt_ids(call) or []
        if prompt[: len(ids)] != ids:
            consistent = False
            ids, mask, logprobs = [], [], []
        extra = prompt[len(ids) :]
        ids += extra
        mask += [0] * len(extra)
        logprobs += [0.0] * len(extra)
        sampled = list(call.completion_token_ids)
        ids += sampled
        mask += [1] * len(sampled)
        call_logprobs = list(call.logprobs or [])
        logprobs += [float(x) for x in call_logprobs[: len(sampled)]] + [0.0] * (
            len(sampled) - len(call_logprobs)
        )
    return {"token_ids": ids, "loss_mask": mask, "logprobs": logprobs, "consistent": consistent}


class RLMTask(vf.Task[RLMTaskData, vf.State, vf.TaskConfig]):
    """One RLM task; rewards re-score the episode record with `rewards.Rubric`."""

    NEEDS_CONTAINER = False

    @property
    def key(self) -> str:
        d = self.data
        if d.dataset is not None:
            return f"{d.dataset}#{d.row}"
        return f"{d.family}/{d.split}/{d.length}/{d.seed}"

    async def setup(self, trace: vf.Trace, runtime: vf.Runtime) -> None:
        import asyncio

        await asyncio.to_thread(materialise, self.data)  # generated once, cached for the harness

    async def _scores(self, trace: vf.Trace) -> dict[str, float]:
        cached = trace.info.get("rlm_rewards")
        if cached is not None:
            return cached
        from rewards import Rubric

        record = _record(trace)
        if record is None:
            return {}
        scores = await Rubric().score(record)
        trace.info["rlm_rewards"] = scores
        return scores

    @vf.reward(weight=1.0)
    async def correctness(self, trace: vf.Trace) -> float:
        return float((await self._scores(trace)).get("correctness", 0.0))

    @vf.reward(weight=0.0)
    async def format(self, trace: vf.Trace) -> float:
        return float((await self._scores(trace)).get("format", 0.0))

    @vf.reward(weight=0.0)
    async def cost(self, trace: vf.Trace) -> float:
        return float((await self._scores(trace)).get("cost", 0.0))

    @vf.metric
    async def correctness_any(self, trace: vf.Trace) -> float:
        return float((await self._scores(trace)).get("correctness_any", 0.0))

    @vf.metric
    async def episode_stats(self, trace: vf.Trace) -> dict[str, float]:
        record = _record(trace)
        if record is None:
            return {}
        return {
            "answered": float(record.answer.status != "none"),
            "root_turns": float(record.budget.get("root_turns", 0)),
            "cells": float(len(record.cells)),
            "sub_calls": float(record.budget.get("sub_calls", 0)),
            "episode_wall_s": float(record.wall_time_s),
        }


class RLMTaskset(vf.Taskset[RLMTask, RLMTasksetConfig]):
    """Generated families or a user dataset, by reference (see the module docstring)."""

    def load(self) -> Iterator[RLMTask]:
        c = self.config
        if c.dataset:
            for row, task in enumerate(_dataset_tasks(c.dataset, c.split or None)[: c.count]):
                yield RLMTask(self._data(task, dataset=c.dataset, row=row), c.task)
            return
        from rlm_env.tasks import get_family, parse_length

        family = get_family(c.family)
        for label in c.lengths:
            length = parse_length(label)
            for k in range(c.count):
                seed = c.seed + k
                task = family.generate(seed, length, c.split)
                yield RLMTask(self._data(task, family=c.family, length=length, seed=seed), c.task)

    def _data(self, task: RLMTaskSpec, **ref: Any) -> RLMTaskData:
        expected = task.expected_answer
        json.dumps(expected)  # must travel in the trace as JSON
        return RLMTaskData(
            id=task.id,
            name=task.id,
            prompt=task.question,
            split=self.config.split,
            answer=expected,
            scorer=task.scorer,
            **ref,
        )


class RLMHarnessConfig(vf.HarnessConfig):
    """How the RLM harness runs an episode (`--env.agent.harness.<field>`)."""

    id: str = "rlm-env"
    sub_model: str = "endpoint"
    """"endpoint": sub-calls go through the rollout's interception endpoint (traced, same model
    as the root); otherwise a model spec for `rlm_env.models.build_model` ("default",
    "openai:<url>#<model>", "echo"), served outside the trace."""
    episode: EpisodeConfig = EpisodeConfig()
    """The episode's config, e.g. `--env.agent.harness.episode.budget.max-root-turns 4`."""
    request_timeout_s: float = Field(300.0, gt=0)
    """Longest one model call through the endpoint may take."""


class RLMHarness(vf.Harness[RLMHarnessConfig]):
    """Runs our RLM loop in process; every root call goes through `endpoint` (see module doc)."""

    NEEDS_CONTAINER = False
    APPENDS_SYSTEM_PROMPT = True  # the episode builds its own system prompt; no folding

    async def launch(
        self,
        ctx: vf.ModelContext,
        trace: vf.Trace,
        runtime: vf.Runtime,
        endpoint: str,
        secret: str,
        mcp_urls: dict[str, str],
        data: vf.TaskData,
    ) -> vf.ProgramResult:
        import asyncio

        from rlm_env.adapters.rollouts import episode_id, resolve_model
        from rlm_env.episode import Episode
        from rlm_env.models.openai_http import OpenAIChatClient

        if not isinstance(data, RLMTaskData):
            data = RLMTaskData.model_validate(data.model_dump())
        task = await asyncio.to_thread(materialise, data)
        config = self.config.episode
        root = OpenAIChatClient(
            endpoint, ctx.model, api_key=secret, timeout_s=self.config.request_timeout_s, max_retries=0
        )
        owned_sub = False
        if self.config.sub_model == "endpoint":
            sub = root
        else:
            sub, owned_sub = resolve_model(self.config.sub_model, role="sub")
        episode = Episode(task, config, root, sub, episode_id=episode_id(task))
        try:
            record = await episode.run()
        finally:
            await episode.close()
            await root.close()
            if owned_sub and sub is not root:
                await sub.close()
        trace.info["rlm_record"] = record.model_dump(mode="json")
        tokens = token_view(record)
        if tokens is not None:
            trace.info["rlm_tokens"] = tokens
        answer = record.answer.content
        summary = json.dumps({"answer": answer, "status": record.answer.status, "stop": record.stop_reason})
        if record.flags.infra_failure:
            raise vf.HarnessError(
                "RLM episode hit an infrastructure failure: " + "; ".join(record.flags.infra_errors)
            )
        return vf.ProgramResult(exit_code=0, stdout=summary, stderr="")

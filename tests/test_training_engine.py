"""Each mode end to end on the real parts: the default model, the vLLM engine in Ray, the bwrap
sandbox, the real rubric. Tiny on purpose (a task or two, short replies, one or two steps).

What is asserted is structure and numerics, never what the 135M model says:
- every step's episodes were sampled by the checkpoint the loop says (base, then step-1, ...);
- the trained tokens of each episode are exactly the root calls' sampled ids;
- after the last update the engine's logprobs of its own samples match the learner's updated
  model (fp32 recomputation) within tolerance, and match it better than the base model.

One engine (1 replica) serves the whole module; each run syncs its own base weights first.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rlm_env.episode import read_records
from rlm_env.models.base import SamplingParams
from training.config import load_train_config
from training.data import exclusion
from training.logprobs import completion_logprobs, mean_abs_diff
from training.run import Trainer

pytestmark = [pytest.mark.slow, pytest.mark.engine]

SHORT_PROMPT = (
    "Answer a question about `context`, a Python variable in a REPL that you cannot read directly. "
    "Write Python code in ```repl blocks; you will see their output. When you know the answer, call "
    "FINAL(answer) inside a ```repl block."
)
TOLERANCE = 0.06
"""Mean |engine - learner| logprob per token: bf16 engine vs fp32 learner measured 0.01-0.03."""


def tiny(mode: str, out: Path, **extra) -> dict:
    data = {
        "mode": mode,
        "out": str(out),
        "sync_dir": str(out / "shm"),
        "micro_batch": 2,
        "batch_size": 2,
        "max_seq_len": 1024,
        "optim": {"lr": 5e-3},
        "rubric": {"weights": {"correctness": 1.0, "format": 0.2, "cost": 0.2}},
        "rollout": {"task": "niah", "lengths": ["1k"], "tasks_per_step": 1, "concurrency": 4},
        "episode": {
            "system_prompt": SHORT_PROMPT,
            "code_fence_languages": ["repl", "python"],
            "budget": {"max_root_turns": 2, "context_window": 1024, "max_sub_calls": 2, "wall_clock_s": 90},
            "root_sampling": {"max_tokens": 48, "temperature": 1.0},
            "sub_sampling": {"max_tokens": 16, "temperature": 0.0},
        },
    }
    for key, value in extra.items():
        data[key] = value
    return data


@pytest.fixture(scope="module")
def engine(default_model_path):
    from rlm_env.models.config import EngineConfig
    from rlm_env.models.engine_pool import VLLMRayClient

    config = EngineConfig(replicas=1, max_model_len=2048, kvcache_gb=0.5, request_timeout_s=120.0)
    client = VLLMRayClient(str(default_model_path), config).start()
    yield client
    client.shutdown()


def checkpoint_of(call, names: dict[str, str]) -> str:
    return call.checkpoint or names[f"v{call.weight_version}"]


def assert_trained_tokens_are_sampled(out: Path, step: int, trained_ids: list[str]) -> list:
    records = {r.episode_id: r for r in read_records(out / "records" / f"step-{step:04d}.jsonl")}
    for episode_id in trained_ids:
        r = records[episode_id]
        assert exclusion(r) is None
        sample = r.root_sample
        trained = [t for t, m in zip(sample.token_ids, sample.loss_mask, strict=True) if m]
        assert trained == [t for c in r.calls if c.role == "root" for t in c.completion_token_ids]
    return list(records.values())


async def assert_engine_serves_learner(engine, learner, prompt_ids: list[int]) -> None:
    sampling = SamplingParams(max_tokens=24, temperature=1.0, seed=1)
    completion = await engine.generate([], sampling, prompt_token_ids=prompt_ids)
    ids = completion.completion_token_ids
    trained = completion_logprobs(learner.model, prompt_ids, ids)
    with learner.model.disable_adapter():
        base = completion_logprobs(learner.model, prompt_ids, ids)
    to_trained = mean_abs_diff(completion.logprobs, trained)
    to_base = mean_abs_diff(completion.logprobs, base)
    assert to_trained < TOLERANCE, (to_trained, to_base)
    assert to_trained < to_base, (to_trained, to_base)


async def test_grpo_end_to_end(engine, default_model_path, tmp_path):
    out = tmp_path / "grpo"
    config = load_train_config(data=tiny("grpo", out, steps=2, grpo={"group_size": 3}))
    trainer = Trainer(config, str(default_model_path), root_model=engine)
    rows = await trainer.train()
    assert [r["step"] for r in rows] == [1, 2]
    names = json.loads((out / "checkpoints.json").read_text())
    trained = [json.loads(x) for x in (out / "trained_on.jsonl").read_text().splitlines()]
    sampled_by = {1: "grpo/base", 2: "grpo/step-1"}
    for row, step_trained in zip(rows, trained, strict=True):
        step = row["step"]
        records = assert_trained_tokens_are_sampled(out, step, step_trained["episode_ids"])
        assert len(records) == 3
        for r in records:
            for call in r.calls:
                if call.role == "root" and call.error is None:
                    assert checkpoint_of(call, names) == sampled_by[step]
        assert row["time/sync_s"] > 0 and "reward/reward" in row
    assert any(r["data/items"] > 0 for r in rows), rows  # the cost term gives every group variance
    last = read_records(out / "records" / "step-0002.jsonl")[0]
    prompt = last.call_prompt_ids(last.calls[0])
    await assert_engine_serves_learner(engine, trainer.learner, prompt)
    assert (out / "reward_curve.png").exists() and any((out / "tb").iterdir())


async def test_rft_end_to_end(engine, default_model_path, tmp_path):
    out = tmp_path / "rft"
    # Keep everything the filter can keep: the 135M model rarely solves a task, and this test is
    # about the loop (sample, filter, fine-tune, reload), not the model.
    rft = {"samples_per_task": 2, "reward_threshold": -10.0, "require_confirmed": False}
    config = load_train_config(data=tiny("rft", out, steps=1, rft=rft))
    trainer = Trainer(config, str(default_model_path), root_model=engine)
    (row,) = await trainer.train()
    (trained,) = [json.loads(x) for x in (out / "trained_on.jsonl").read_text().splitlines()]
    records = assert_trained_tokens_are_sampled(out, 1, trained["episode_ids"])
    rejected = sum(v for k, v in row.items() if k.startswith("data/rejected/"))
    assert row["data/kept"] + rejected == len(records) == 2
    names = json.loads((out / "checkpoints.json").read_text())
    assert "rft/step-1" in names.values()
    if trained["episode_ids"]:
        await assert_engine_serves_learner(
            engine, trainer.learner, records[0].call_prompt_ids(records[0].calls[0])
        )


async def test_sft_on_scripted_demos_then_sync(engine, default_model_path, tmp_path):
    from training.sync import sync_weights

    out = tmp_path / "sft"
    data = tiny("sft", out, steps=2, sft={"demos": 2}, max_seq_len=4096)
    # The experts' replies and transcripts are longer than the sampled runs above allow.
    data["episode"] |= {"budget": {"max_root_turns": 6, "context_window": 4096, "wall_clock_s": 90}}
    data["episode"]["root_sampling"] = {"max_tokens": 512, "temperature": 1.0}
    config = load_train_config(data=data)
    trainer = Trainer(config, str(default_model_path))
    rows = await trainer.train()
    assert rows[1]["learner/loss"] < rows[0]["learner/loss"]  # the same two demos, twice
    demos = read_records(out / "records" / "demos.jsonl")
    assert all(r.answer.status == "confirmed" and r.rewards["correctness"] == 1.0 for r in demos)
    result = await sync_weights(trainer.learner, engine, out / "shm", "sft/step-2")
    assert result.reload_s < 30
    await assert_engine_serves_learner(engine, trainer.learner, demos[0].call_prompt_ids(demos[0].calls[0]))

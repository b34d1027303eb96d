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
from rlm_env.models.logprob_check import ENGINE_MEAN_ABS_TOLERANCE, compare_logprobs, recompute_logprobs
from training.config import load_train_config
from training.data import exclusion
from training.run import Trainer

pytestmark = [pytest.mark.slow, pytest.mark.engine]

SHORT_PROMPT = (
    "Answer a question about `context`, a Python variable in a REPL that you cannot read directly. "
    "Write Python code in ```repl blocks; you will see their output. When you know the answer, call "
    "FINAL(answer) inside a ```repl block."
)
TOLERANCE = ENGINE_MEAN_ABS_TOLERANCE
"""Mean |engine - learner| logprob per token after an update (0.1 nats). Two bf16 effects add up:
the engine's bf16 compute (on the base weights 0.01-0.05) and the export, which rounds the
learner's fp32 merged weights (base + LoRA delta) to bf16; the base weights were bf16 already,
so the rounding only appears after training. Measured on a finished GRPO run of this test
(main, step 2, transformers in place of the engine): rounding alone 0.058, bf16 compute alone
0.029, both 0.060; the old 0.06 bound sat on the expected value and failed at 0.082. Stale
weights, by contrast, are ~1 nat away (that run's step-1 logprobs vs step 2: 1.07)."""


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

    config = EngineConfig(
        replicas=1,
        max_model_len=2048,
        kvcache_gb=0.5,
        request_timeout_s=120.0,
        placement_strategy="STRICT_PACK",
    )
    client = VLLMRayClient(str(default_model_path), config).start()
    yield client
    client.shutdown()


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
    trained = recompute_logprobs(learner.model, prompt_ids, ids)
    with learner.model.disable_adapter():
        base = recompute_logprobs(learner.model, prompt_ids, ids)
    to_trained = compare_logprobs(completion.logprobs, trained)["mean_abs"]
    to_base = compare_logprobs(completion.logprobs, base)["mean_abs"]
    print(f"\n[engine vs learner] mean |logprob diff| {to_trained:.4f} (vs base weights {to_base:.4f})")
    assert to_trained < TOLERANCE, (to_trained, to_base)
    assert to_trained < to_base, (to_trained, to_base)


def test_engine_replicas_sit_in_their_placement_group(engine):
    import ray
    from ray.util.placement_group import placement_group_table

    table = placement_group_table(engine.placement())
    assert table["strategy"] == "STRICT_PACK" and table["state"] == "CREATED"
    assert len(table["bundles"]) == 1  # one bundle per replica
    (actor,) = engine.replica_actors().values()
    assert ray.get(actor.stats.remote(), timeout=60)["name"].endswith("/r0")


async def test_grpo_end_to_end(engine, default_model_path, tmp_path):
    out = tmp_path / "grpo"
    config = load_train_config(data=tiny("grpo", out, steps=2, grpo={"group_size": 3}))
    trainer = Trainer(config, str(default_model_path), root_model=engine)
    rows = await trainer.train()
    assert [r["step"] for r in rows] == [1, 2]
    trained = [json.loads(x) for x in (out / "trained_on.jsonl").read_text().splitlines()]
    sampled_by = {1: "grpo/base", 2: "grpo/step-1"}
    for row, step_trained in zip(rows, trained, strict=True):
        step = row["step"]
        records = assert_trained_tokens_are_sampled(out, step, step_trained["episode_ids"])
        assert len(records) == 3
        for r in records:
            for call in r.calls:
                if call.role == "root" and call.error is None:
                    assert call.checkpoint == sampled_by[step]
        assert row["time/sync_s"] > 0 and "reward/reward" in row
    assert any(r["data/items"] > 0 for r in rows), rows  # the cost term gives every group variance
    assert engine.checkpoint == "grpo/step-2"  # the last update reached the engine
    last = read_records(out / "records" / "step-0002.jsonl")[0]
    prompt = last.call_prompt_ids(last.calls[0])
    await assert_engine_serves_learner(engine, trainer.learner, prompt)
    assert (out / "reward_curve.png").exists() and any((out / "tb").iterdir())


async def test_grpo_with_policy_lag_one(engine, default_model_path, tmp_path):
    """Rollouts of step n+1 run while the learner trains step n: they were sampled by step n-1's
    or step n's weights (as recorded), never older, and every step's counters line up."""
    out = tmp_path / "lag"
    rollout = tiny("grpo", out)["rollout"] | {"max_policy_lag": 1}
    config = load_train_config(data=tiny("grpo", out, steps=3, grpo={"group_size": 2}, rollout=rollout))
    rows = await Trainer(config, str(default_model_path), root_model=engine).train()
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert [r["checkpoint"] for r in rows] == ["lag/step-1", "lag/step-2", "lag/step-3"]
    trained = [json.loads(x) for x in (out / "trained_on.jsonl").read_text().splitlines()]
    assert [t["step"] for t in trained] == [1, 2, 3]
    allowed = {1: {"lag/base"}, 2: {"lag/base", "lag/step-1"}, 3: {"lag/step-1", "lag/step-2"}}
    named = 0
    for row in rows:
        step = row["step"]
        records = read_records(out / "records" / f"step-{step:04d}.jsonl")
        assert len(records) == 2
        for r in records:
            for call in r.calls:
                if call.role != "root" or call.error is not None:
                    continue
                if call.checkpoint is None:  # the reload landed mid-call: no single policy
                    assert call.checkpoint_changed and step > 1
                else:
                    assert call.checkpoint in allowed[step], (step, call.checkpoint)
                    named += 1
        assert row["data/stale_dropped"] == 0 and row["policy/lag_max"] <= 1
        assert "learner/loss" in row or row["learner/skipped"] == 1
    assert named > 0
    assert rows[0]["policy/lag_max"] == 0  # step 1 cannot run ahead of anything
    assert engine.checkpoint == "lag/step-3"


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
    assert all(c.checkpoint == "rft/base" for r in records for c in r.calls if c.role == "root")
    assert engine.checkpoint == "rft/step-1"
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

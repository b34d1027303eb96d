"""What one learner step costs in memory and time, per learner setting: `python -m training.bench_memory`.

Each variant runs in a fresh process (so its peak RSS is its own): the default model, LoRA as
in configs/sft.toml, one SFT optimizer step on `--items` synthetic transcripts of `--tokens`
tokens, of which `--trained` (a fraction) carry loss-mask 1, as a real transcript does (prompt,
REPL output and chat template are the rest: 35-45% of the tokens were trained in this repo's
SFT, RFT and GRPO runs). Token ids are random: a step's memory and time do not depend on them.

Variants: micro_batch 1 and 2, with and without gradient checkpointing, and one with every
token trained (the output head then runs on every position, as it did before the learner
restricted it to trained positions). Printed: the process's RSS growth over the step (peak
minus before) and the step's wall time. Not guaranteed: absolute figures on a loaded machine;
compare the rows of one run.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import time

VARIANTS = [
    {"micro_batch": 1, "gradient_checkpointing": False, "all_trained": False},
    {"micro_batch": 1, "gradient_checkpointing": True, "all_trained": False},
    {"micro_batch": 2, "gradient_checkpointing": False, "all_trained": False},
    {"micro_batch": 2, "gradient_checkpointing": True, "all_trained": False},
    {"micro_batch": 2, "gradient_checkpointing": False, "all_trained": True},
]


def one_step(variant: dict, items: int, tokens: int, trained: float) -> dict:
    """Runs in the child process: load, one SFT step, measure."""
    from rlm_env.models import resolve_model
    from training.config import TrainConfig
    from training.data import TrainItem
    from training.learner import Learner

    config = TrainConfig(
        mode="sft",
        sft={"demos": 1},
        micro_batch=variant["micro_batch"],
        batch_size=items,
        max_seq_len=tokens,
        gradient_checkpointing=variant["gradient_checkpointing"],
    )
    learner = Learner.from_config(resolve_model("default"), config)
    rng = random.Random(0)
    batch = []
    for k in range(items):
        ids = [rng.randrange(100, 40000) for _ in range(tokens)]
        if variant["all_trained"]:
            mask = [0] + [1] * (tokens - 1)
        else:  # trained spans after each observation, like a multi-turn transcript
            mask = [1 if (t // 100) % 10 < 10 * trained and t > 200 else 0 for t in range(tokens)]
        batch.append(TrainItem(f"e{k}", "g", ids, mask, [None] * tokens))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    metrics = learner.train_step(batch, "sft")
    return {
        **variant,
        "step_s": round(time.perf_counter() - started, 1),
        "rss_growth_gb": round((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1e6, 2),
        "loss_tokens": metrics["loss_tokens"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=1400)
    parser.add_argument("--trained", type=float, default=0.4)
    parser.add_argument("--variant", type=int, help=argparse.SUPPRESS)  # the child's
    args = parser.parse_args()
    if args.variant is not None:
        print(json.dumps(one_step(VARIANTS[args.variant], args.items, args.tokens, args.trained)))
        return
    print(f"{args.items} items x {args.tokens} tokens, {args.trained:.0%} trained; one SFT step each")
    for k in range(len(VARIANTS)):
        cmd = [sys.executable, "-m", "training.bench_memory", "--variant", str(k)]
        cmd += ["--items", str(args.items), "--tokens", str(args.tokens), "--trained", str(args.trained)]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=900, check=True).stdout
        print(out.strip().splitlines()[-1])


if __name__ == "__main__":
    main()

"""The `rlm-env` command: play, eval, collect, export, view, models, bench. Each subcommand lives in its own module;
this file only parses arguments (imports are lazy so `rlm-env --help` stays fast)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any


def _setting(text: str) -> tuple[str, Any]:
    """--set budget.max_root_turns=4 -> ("budget.max_root_turns", 4); values parse as JSON if they can."""
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"--set wants KEY=VALUE, got {text!r}")
    key, raw = text.split("=", 1)
    try:
        value: Any = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return key.strip(), value


def _add_episode_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="TOML file with [episode] settings (and [eval] for eval)")
    p.add_argument(
        "--set",
        action="append",
        type=_setting,
        metavar="KEY=VALUE",
        help="override one episode setting, e.g. --set budget.max_root_turns=4",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rlm-env", description="Recursive Language Model episodes as an RL environment."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    play = sub.add_parser("play", help="act as the root model yourself (replies on stdin, separated by ---)")
    play.add_argument("--context", help="a text file, a .json file or a directory used as the context")
    play.add_argument("--question", help="the question (with --context)")
    play.add_argument("--task", default="niah", help="generated task family when no --context is given")
    play.add_argument("--length", default="8k", help="generated task length in tokens")
    play.add_argument("--seed", type=int, default=0)
    play.add_argument(
        "--sub-model",
        default="echo",
        help="model behind llm_query: default | PATH | vllm:PATH | openai:URL#MODEL | hf:PATH | echo",
    )
    _add_episode_options(play)

    ev = sub.add_parser(
        "eval", help="run episodes on generated tasks or a dataset; write trajectories and a summary"
    )
    ev.add_argument("--task", help="task family (niah, oolong, oolong_pairs, multihop, codeqa)")
    ev.add_argument("--dataset", help="JSONL / Parquet / HF datasets folder instead of a generated family")
    ev.add_argument("--lengths", help="comma-separated context lengths in tokens, e.g. 8k,64k")
    ev.add_argument("--episodes", type=int, help="episodes per length")
    ev.add_argument("--model", help="root model (default: the embedded default model)")
    ev.add_argument("--sub-model", help="sub-call model (default: same engine as --model)")
    ev.add_argument(
        "--adapter",
        help="trained weights on top of --model: a peft LoRA adapter dir or a full checkpoint dir",
    )
    ev.add_argument("--seed", type=int)
    ev.add_argument("--concurrency", type=int, help="episodes in flight at once")
    ev.add_argument(
        "--out", help="output folder (trajectories.jsonl, summary.json); an existing run is resumed"
    )
    _add_episode_options(ev)

    col = sub.add_parser(
        "collect", help="collect episodes into trajectories and a Parquet dataset (resumable, shardable)"
    )
    col.add_argument("--task", help="task family (niah, oolong, oolong_pairs, multihop, codeqa)")
    col.add_argument("--dataset", help="JSONL / Parquet / HF datasets folder instead of a generated family")
    col.add_argument("--lengths", help="comma-separated context lengths in tokens, e.g. 8k,64k")
    col.add_argument("--episodes", type=int, help="episodes per length")
    col.add_argument("--model", help="root model (default: the embedded default model)")
    col.add_argument("--sub-model", help="sub-call model (default: same engine as --model)")
    col.add_argument("--seed", type=int)
    col.add_argument("--split", help="task split to draw from (default: train)")
    col.add_argument("--concurrency", type=int, help="episodes in flight at once (per worker)")
    col.add_argument("--out", help="output folder; an existing run is resumed")
    col.add_argument("--workers", type=int, help="run this many Ray workers (shards named ray-0, ray-1, ...)")
    col.add_argument("--worker", help="this machine's worker name (names its shard files)")
    col.add_argument("--worker-index", type=int, help="this worker's slice: tasks i, i+K, ...")
    col.add_argument("--num-workers", type=int, help="K, the number of workers sharing the tasks")
    _add_episode_options(col)

    exp = sub.add_parser(
        "export", help="filter a run's episodes into a training set (records or root samples)"
    )
    exp.add_argument("dir", help="a run folder (eval, collect, train) or a trajectories.jsonl")
    exp.add_argument("--out", required=True, help="*.jsonl (records) or *.parquet (dataset rows)")
    exp.add_argument("--samples", action="store_true", help="write root samples (training.samples fields)")
    exp.add_argument("--min-reward", type=float)
    exp.add_argument("--max-reward", type=float)
    exp.add_argument("--stop-reason", help="comma-separated stop reasons to keep, e.g. answer")
    exp.add_argument("--answer-status", help="comma-separated answer statuses to keep, e.g. confirmed")
    exp.add_argument("--family", help="comma-separated task families to keep")
    exp.add_argument("--length", help="comma-separated lengths to keep, e.g. 8k,32k")
    exp.add_argument("--trainable", action="store_true", help="keep only episodes a trainer may use")

    view = sub.add_parser("view", help="serve a local web page over a run folder (127.0.0.1 only)")
    view.add_argument("dir", help="a run folder holding trajectories.jsonl (eval, collect or train)")
    view.add_argument("--port", type=int, default=8765)

    demos = sub.add_parser(
        "demos", help="scripted expert demonstrations (a training data source) through the real episode loop"
    )
    demos.add_argument("--task", default="niah", help="task family with an expert (niah, multihop)")
    demos.add_argument("--lengths", default="8k", help="comma-separated context lengths, e.g. 8k,32k")
    demos.add_argument("--episodes", type=int, default=20, help="episodes per length")
    demos.add_argument("--split", default="train", help="train (default) or test")
    demos.add_argument("--seed", type=int, default=0)
    demos.add_argument(
        "--strategy", help="one expert strategy for every episode (default: drawn per episode)"
    )
    demos.add_argument("--sub-model", default="echo", help="model behind the experts' sub-calls")
    demos.add_argument(
        "--style",
        default="varied",
        choices=("varied", "fixed"),
        help="varied variable names per episode, or one fixed set (niah)",
    )
    demos.add_argument("--concurrency", type=int, default=2)
    demos.add_argument("--out", help="output folder (default runs/demos-<task>); an existing run is resumed")
    _add_episode_options(demos)

    models = sub.add_parser("models", help="list cached models; --ensure builds the default model")
    models.add_argument(
        "--ensure", action="store_true", help="fetch and convert the default model if missing"
    )
    models.add_argument("--cache-dir", help="cache root (default ~/.cache/rlm-env or $RLM_ENV_CACHE)")

    bench = sub.add_parser("bench", help="benchmarks")
    bench_sub = bench.add_subparsers(dest="bench_command", required=True)
    quality = bench_sub.add_parser(
        "quality", help="accuracy versus context length: RLM versus the plain model"
    )
    quality.add_argument("--task", default="niah")
    quality.add_argument("--dataset")
    quality.add_argument("--lengths", default="8k,32k")
    quality.add_argument("--episodes", type=int, default=4)
    quality.add_argument("--model", default="default")
    quality.add_argument("--seed", type=int, default=0)
    quality.add_argument("--out", default="runs/bench-quality")
    quality.add_argument("--split", default="test", help="task split (held-out: test)")
    quality.add_argument("--adapter", help="trained weights: adds the trained-RLM arm")
    quality.add_argument(
        "--arms", help="comma list of rlm, plain, trained (default: all that apply); none: only assemble"
    )
    quality.add_argument("--concurrency", type=int, default=8)
    _add_episode_options(quality)
    perf = bench_sub.add_parser("perf", help="environment overhead benchmarks; writes BENCHMARKS.md")
    perf.add_argument(
        "--short", action="store_true", help="few repetitions (used by the tests); numbers printed only"
    )
    perf.add_argument("--out", default="BENCHMARKS.md")
    perf.add_argument("--skip-engine", action="store_true", help="skip the figures that need the vLLM engine")
    train = sub.add_parser(
        "train", help="train a policy: sft, rft or grpo (see configs/sft.toml, rft.toml, grpo.toml)"
    )
    train.add_argument("--config", required=True, help="TOML training config (mode, model, adapter, ...)")
    train.add_argument("--out", help="run folder (an existing one is resumed from its last checkpoint)")
    train.add_argument(
        "--steps", type=int, help="total steps (sft: optimizer steps; rft: rounds; grpo: rollout steps)"
    )
    train.add_argument("--workers", type=int, help="data-parallel learner workers (more than 1: Ray Train)")
    train.add_argument(
        "--ray-address", help="attach to an existing Ray cluster (e.g. auto or ray://HOST:10001)"
    )
    train.add_argument(
        "--set",
        action="append",
        type=_setting,
        metavar="KEY=VALUE",
        help="override a config field, e.g. --set grpo.group_size=2",
    )
    return parser


def _models(args: argparse.Namespace) -> int:
    from rlm_env.models.default_model import ensure_default_model, list_cached_models

    if args.ensure:
        path = ensure_default_model(args.cache_dir)
        print(f"default model ready: {path}")
    rows = list_cached_models(args.cache_dir)
    if not rows:
        print("no cached models (run `rlm-env models --ensure`)")
    for row in rows:
        print(json.dumps(row, default=str))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "play":
        from rlm_env.play import main as run
    elif args.command == "eval":
        from rlm_env.evaluate import main as run
    elif args.command == "collect":
        from rlm_env.collect.run import main as run
    elif args.command == "export":
        from rlm_env.collect.filters import main as run
    elif args.command == "view":
        from rlm_env.viewer.app import main as run
    elif args.command == "demos":
        from training.demos.run import main as run
    elif args.command == "models":
        run = _models
    elif args.command == "train":
        from training.run import main as run
    elif args.bench_command == "quality":
        from rlm_env.bench.quality import main as run
    else:
        from rlm_env.bench.perf import main as run
    return int(run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())

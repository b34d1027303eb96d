"""`rlm-env bench quality`: accuracy versus context length, RLM versus the plain model.

The paper's central picture (its Figure 1): the same model, as an RLM and as a plain model that
reads the context directly, scored over growing context lengths. The plain model gets the
context cut to fit its window (the head is kept, the paper's base-model baseline), the question,
and one reply. Both runs use the same tasks, the same engine and the same scorer.

Writes to the output folder: `rlm/trajectories.jsonl` (RLM episodes), `plain.jsonl` (plain
calls), `quality.json` and `quality.md` (the table), `quality.png` (score versus length, log
scale, with tokens per episode beside it).
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from pathlib import Path
from typing import Any

from rlm_env.episode.config import load_config
from rlm_env.evaluate import EvalConfig, episode_id_for, run_eval
from rlm_env.models.base import SamplingParams
from rlm_env.tasks.base import ContextDir, ContextFile, Task

PLAIN_SYSTEM = "Answer the question about the document. Reply with the answer only."


def context_head(context: Any, max_chars: int) -> str:
    """The first max_chars characters of the context as text, without loading more than needed."""
    if isinstance(context, ContextFile):
        with open(context.path, encoding="utf-8", errors="replace") as f:
            return f.read(max_chars)
    if isinstance(context, ContextDir):
        parts, size = [], 0
        for path in sorted(p for p in context.path.rglob("*") if p.is_file() and not p.is_symlink()):
            text = f"# {path.relative_to(context.path)}\n" + path.read_text(errors="replace")
            parts.append(text)
            size += len(text)
            if size >= max_chars:
                break
        return "\n".join(parts)[:max_chars]
    if isinstance(context, str):
        return context[:max_chars]
    return json.dumps(context)[:max_chars]


async def plain_call(model: Any, task: Task, window: int, reply_tokens: int) -> dict[str, Any]:
    """One plain-model attempt: the context's head cut to the window, then the question."""
    from rewards.scorers import score_answer

    tokenizer = getattr(model, "tokenizer", None)
    question = f"\n\nQuestion: {task.question}\nAnswer:"
    budget_tokens = window - reply_tokens - 96
    head = context_head(task.context, budget_tokens * 6)
    if tokenizer is not None:
        overhead = len(tokenizer.encode(PLAIN_SYSTEM + question, add_special_tokens=False))
        ids = tokenizer.encode(head, add_special_tokens=False)[: max(0, budget_tokens - overhead)]
        head = tokenizer.decode(ids)
    else:
        head = head[: budget_tokens * 3]
    messages = [{"role": "system", "content": PLAIN_SYSTEM}, {"role": "user", "content": head + question}]
    started = time.monotonic()
    completion = await model.generate(messages, SamplingParams(max_tokens=reply_tokens, temperature=0.0))
    score = score_answer(task.scorer or "exact", completion.text.strip(), task.expected_answer)
    return {
        "task_id": task.id,
        "length_label": task.metadata.get("length_label"),
        "answer": completion.text.strip(),
        "expected": task.expected_answer,
        "score": float(score),
        "prompt_tokens": completion.num_prompt_tokens,
        "completion_tokens": completion.num_completion_tokens,
        "wall_s": round(time.monotonic() - started, 3),
    }


def table_rows(
    rlm_records: list[Any], plain: list[dict[str, Any]], lengths: list[str]
) -> list[dict[str, Any]]:
    def mean(xs: list[float]) -> float:
        return round(statistics.fmean(xs), 4) if xs else 0.0

    rows = []
    for label in lengths:
        rl = [r for r in rlm_records if r.task.get("metadata", {}).get("length_label") == label]
        pl = [p for p in plain if p["length_label"] == label]
        rows.append(
            {
                "length": label,
                "tokens": rl[0].task["metadata"].get("length_tokens") if rl else None,
                "rlm_score": mean([r.rewards.get("correctness", 0.0) for r in rl]),
                "plain_score": mean([p["score"] for p in pl]),
                "rlm_tokens_per_episode": mean(
                    [
                        r.budget.get("root_prompt_tokens", 0)
                        + r.budget.get("root_completion_tokens", 0)
                        + r.budget.get("sub_prompt_tokens", 0)
                        + r.budget.get("sub_completion_tokens", 0)
                        for r in rl
                    ]
                ),
                "plain_tokens_per_episode": mean([p["prompt_tokens"] + p["completion_tokens"] for p in pl]),
                "rlm_wall_s": mean([r.wall_time_s for r in rl]),
                "plain_wall_s": mean([p["wall_s"] for p in pl]),
                "episodes": len(rl),
            }
        )
    return rows


def write_outputs(out: Path, rows: list[dict[str, Any]], title: str) -> None:
    (out / "quality.json").write_text(json.dumps({"title": title, "rows": rows}, indent=2))
    header = list(rows[0].keys()) if rows else []
    lines = [f"# {title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(r[k]) for k in header) + " |" for r in rows]
    (out / "quality.md").write_text("\n".join(lines) + "\n")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = [r["tokens"] or 0 for r in rows]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    ax1.plot(xs, [r["rlm_score"] for r in rows], "o-", label="RLM")
    ax1.plot(xs, [r["plain_score"] for r in rows], "s--", label="plain (context cut to window)")
    ax1.set(
        xscale="log",
        xlabel="context length (tokens)",
        ylabel="score",
        ylim=(-0.05, 1.05),
        title="score vs length",
    )
    ax1.legend()
    ax2.plot(xs, [r["rlm_tokens_per_episode"] for r in rows], "o-", label="RLM")
    ax2.plot(xs, [r["plain_tokens_per_episode"] for r in rows], "s--", label="plain")
    ax2.set(
        xscale="log",
        yscale="log",
        xlabel="context length (tokens)",
        ylabel="tokens per episode",
        title="cost",
    )
    ax2.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out / "quality.png", dpi=110)
    plt.close(fig)


async def run_quality(
    tasks: list[Task], model: Any, episode_config: Any, out: Path, lengths: list[str], title: str
) -> list[dict[str, Any]]:
    """Run both arms on the same tasks and engine, write every output, return the table rows."""
    from rewards import Rubric, RubricConfig

    out.mkdir(parents=True, exist_ok=True)
    eval_config = EvalConfig(out=str(out / "rlm"), concurrency=4)
    records = await run_eval(eval_config, episode_config, tasks, model, model, Rubric(RubricConfig()))
    window = episode_config.budget.context_window
    plain = await asyncio.gather(*(plain_call(model, t, window, 64) for t in tasks))
    with open(out / "plain.jsonl", "w") as f:
        for p in plain:
            f.write(json.dumps(p, default=str) + "\n")
    wanted = {episode_id_for(t) for t in tasks}
    rows = table_rows([r for r in records if r.episode_id in wanted], list(plain), lengths)
    write_outputs(out, rows, title)
    return rows


def main(args: Any) -> int:
    from rlm_env.evaluate import build_tasks
    from rlm_env.models import EngineConfig, build_model

    lengths = [x.strip() for x in args.lengths.split(",") if x.strip()]
    eval_config = EvalConfig(
        task=args.task,
        dataset=args.dataset,
        lengths=lengths,
        episodes=args.episodes,
        model=args.model,
        seed=args.seed,
    )
    episode_config = load_config(args.config, dict(args.set or []))
    tasks = build_tasks(eval_config)
    out = Path(args.out)
    title = f"{args.task or args.dataset}: {args.model} as RLM vs plain ({args.episodes} episodes per length)"

    async def _run() -> list[dict[str, Any]]:
        model = build_model(args.model, role="root", config=EngineConfig())
        try:
            return await run_quality(
                tasks, model, episode_config, out, lengths if not args.dataset else ["dataset"], title
            )
        finally:
            await model.close()

    asyncio.run(_run())
    print((out / "quality.md").read_text())
    print(f"raw: {out / 'rlm' / 'trajectories.jsonl'}, {out / 'plain.jsonl'}\nplot: {out / 'quality.png'}")
    return 0

"""`rlm-env bench quality`: accuracy versus context length, RLM versus the plain model.

The paper's central picture (its Figure 1): the same model, as an RLM and as a plain model that
reads the context directly, scored over growing context lengths. The plain model gets the
context cut to fit its window (the head is kept, the paper's base-model baseline), the question,
and one reply. With `--adapter DIR` a third arm runs: the trained RLM (the same base with the
adapter merged, served by its own engine). Every arm runs the same tasks under the same episode
settings and scorer.

Writes to the output folder: `rlm/trajectories.jsonl` (untrained RLM episodes),
`trained/trajectories.jsonl` (trained RLM episodes), `plain.jsonl` (plain calls), `quality.json`
and `quality.md` (the table), `quality.png` (score versus length, log scale, with tokens per
episode beside it). Every arm resumes: episodes and plain calls already in the folder are not
run again, so a figure can be built one length or one arm at a time (`--arms`) and a final run
over every length only assembles it.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from pathlib import Path
from typing import Any

from rlm_env.episode.config import load_config
from rlm_env.evaluate import EvalConfig, console, episode_id_for, run_eval
from rlm_env.models.base import ModelError, SamplingParams
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


ARMS = ("rlm", "plain", "trained")
"""Untrained RLM, the plain model reading the context's head, the trained RLM (`--adapter`)."""
_LABELS = {"rlm": "RLM (untrained)", "plain": "plain (context cut to window)", "trained": "RLM (trained)"}


def _mean(xs: list[float]) -> float:
    return round(statistics.fmean(xs), 4) if xs else 0.0


def _rlm_columns(arm: str, records: list[Any]) -> dict[str, Any]:
    def total_tokens(r: Any) -> float:
        b = r.budget
        return (
            b.get("root_prompt_tokens", 0)
            + b.get("root_completion_tokens", 0)
            + b.get("sub_prompt_tokens", 0)
            + b.get("sub_completion_tokens", 0)
        )

    if not records:  # not measured at this length: no number rather than a zero
        return {
            f"{arm}_{k}": None for k in ("score", "tokens_per_episode", "turns", "sub_calls", "wall_s")
        } | {f"{arm}_episodes": 0}
    return {
        f"{arm}_score": _mean([r.rewards.get("correctness", 0.0) for r in records]),
        f"{arm}_tokens_per_episode": _mean([total_tokens(r) for r in records]),
        f"{arm}_turns": _mean([r.budget.get("root_turns", 0) for r in records]),
        f"{arm}_sub_calls": _mean([r.budget.get("sub_calls", 0) for r in records]),
        f"{arm}_wall_s": _mean([r.wall_time_s for r in records]),
        f"{arm}_episodes": len(records),
    }


def table_rows(
    rlm_records: list[Any] | None,
    plain: list[dict[str, Any]] | None,
    lengths: list[str],
    trained_records: list[Any] | None = None,
) -> list[dict[str, Any]]:
    """One row per length; an arm that was not run (None) has no columns."""

    def of_length(records: list[Any], label: str) -> list[Any]:
        return [r for r in records if r.task.get("metadata", {}).get("length_label") == label]

    rows = []
    for label in lengths:
        row: dict[str, Any] = {"length": label, "tokens": None}
        for arm, records in (("rlm", rlm_records), ("trained", trained_records)):
            if records is not None:
                rl = of_length(records, label)
                row["tokens"] = row["tokens"] or (rl[0].task["metadata"].get("length_tokens") if rl else None)
                row.update(_rlm_columns(arm, rl))
        if plain is not None:
            pl = [p for p in plain if p["length_label"] == label]
            row["plain_score"] = _mean([p["score"] for p in pl]) if pl else None
            row["plain_tokens_per_episode"] = (
                _mean([p["prompt_tokens"] + p["completion_tokens"] for p in pl]) if pl else None
            )
            row["plain_wall_s"] = _mean([p["wall_s"] for p in pl]) if pl else None
            row["plain_episodes"] = len(pl)
        row["episodes"] = max((v for k, v in row.items() if k.endswith("_episodes")), default=0)
        rows.append(row)
    return rows


def write_outputs(out: Path, rows: list[dict[str, Any]], title: str) -> None:
    (out / "quality.json").write_text(json.dumps({"title": title, "rows": rows}, indent=2))
    header = list(rows[0].keys()) if rows else []
    lines = [f"# {title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(r.get(k)) for k in header) + " |" for r in rows]
    (out / "quality.md").write_text("\n".join(lines) + "\n")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = [r["tokens"] or 0 for r in rows]
    styles = {"rlm": "o-", "plain": "s--", "trained": "^-"}
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    for arm in ARMS:
        measured = [(x, r) for x, r in zip(xs, rows, strict=True) if r.get(f"{arm}_score") is not None]
        if measured:  # lengths where the arm was not run are left out, not drawn as zero
            ax1.plot([x for x, _ in measured], [r[f"{arm}_score"] for _, r in measured], styles[arm],
                     label=_LABELS[arm])  # fmt: skip
            ax2.plot([x for x, _ in measured], [r[f"{arm}_tokens_per_episode"] for _, r in measured],
                     styles[arm], label=_LABELS[arm])  # fmt: skip
    ax1.set(
        xscale="log",
        xlabel="context length (tokens)",
        ylabel="score",
        ylim=(-0.05, 1.05),
        title="score vs length",
    )
    ax1.legend()
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


async def run_plain_arm(tasks: list[Task], model: Any, window: int, path: Path) -> list[dict[str, Any]]:
    """Plain calls for `tasks`, appended to `path` as they finish; calls already there are kept."""
    done: dict[str, dict[str, Any]] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue  # a torn last line from a kill: that call runs again
            done[row["task_id"]] = row
    todo = [t for t in tasks if t.id not in done]
    semaphore = asyncio.Semaphore(8)

    async def one(task: Task) -> dict[str, Any] | None:
        async with semaphore:
            try:
                return await plain_call(model, task, window, 64)
            except ModelError as e:  # the engine failed, not the model: no row, run it next time
                console.print(f"[yellow]plain call for {task.id} failed ({e}); it runs again on resume")
                return None

    with open(path, "a") as f:
        for future in asyncio.as_completed([one(t) for t in todo]):
            row = await future
            if row is None:
                continue
            f.write(json.dumps(row, default=str) + "\n")
            f.flush()
            done[row["task_id"]] = row
    missing = [t.id for t in tasks if t.id not in done]
    if missing:
        raise SystemExit(
            f"{len(missing)} plain call(s) failed on the engine; run the same command again to finish them"
        )
    return [done[t.id] for t in tasks]


async def run_rlm_arm(
    tasks: list[Task], model: Any, episode_config: Any, out: Path, concurrency: int = 4
) -> list[Any]:
    """RLM episodes for `tasks` in `out/trajectories.jsonl` (resumed), the ones for `tasks` returned."""
    from rewards import Rubric, RubricConfig

    eval_config = EvalConfig(out=str(out), concurrency=concurrency)
    records = await run_eval(eval_config, episode_config, tasks, model, model, Rubric(RubricConfig()))
    wanted = {episode_id_for(t) for t in tasks}
    return [r for r in records if r.episode_id in wanted]


async def run_quality(
    tasks: list[Task],
    model: Any,
    episode_config: Any,
    out: Path,
    lengths: list[str],
    title: str,
    *,
    trained_model: Any = None,
    arms: tuple[str, ...] = ("rlm", "plain"),
    concurrency: int = 4,
) -> list[dict[str, Any]]:
    """Run the chosen arms on the same tasks, write every output, return the table rows.

    `model` serves the untrained RLM and the plain arm; `trained_model` the "trained" arm. Arms not
    in `arms` are read from the folder when an earlier run left them there."""
    from rlm_env.episode import read_records

    out.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {}
    if "rlm" in arms:
        results["rlm"] = await run_rlm_arm(tasks, model, episode_config, out / "rlm", concurrency)
    if "plain" in arms:
        window = episode_config.budget.context_window
        results["plain"] = await run_plain_arm(tasks, model, window, out / "plain.jsonl")
    if "trained" in arms:
        if trained_model is None:
            raise ValueError("the trained arm needs trained_model (bench quality --adapter DIR)")
        results["trained"] = await run_rlm_arm(
            tasks, trained_model, episode_config, out / "trained", concurrency
        )
    ids = {episode_id_for(t) for t in tasks}
    task_ids = {t.id for t in tasks}
    for arm in ("rlm", "trained"):
        path = out / arm / "trajectories.jsonl"
        if arm not in results and path.exists():
            results[arm] = [r for r in read_records(path) if r.episode_id in ids]
    if "plain" not in results and (out / "plain.jsonl").exists():
        rows = [json.loads(x) for x in (out / "plain.jsonl").read_text().splitlines() if x.strip()]
        results["plain"] = [r for r in rows if r["task_id"] in task_ids]
    rows = table_rows(results.get("rlm"), results.get("plain"), lengths, results.get("trained"))
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
        split=args.split,
    )
    spec = args.arms or ("rlm,plain,trained" if args.adapter else "rlm,plain")
    # "none": run nothing, only assemble the table and figure from what the folder holds.
    arms = () if spec == "none" else tuple(a.strip() for a in spec.split(","))
    unknown = set(arms) - set(ARMS)
    if unknown or ("trained" in arms and not args.adapter):
        raise SystemExit(f"--arms: choose from {', '.join(ARMS)}; 'trained' needs --adapter DIR")
    episode_config = load_config(args.config, dict(args.set or []))
    tasks = build_tasks(eval_config)
    out = Path(args.out)
    name = args.task or args.dataset
    title = f"{name} ({args.split} split): {args.model} as RLM vs plain"
    if args.adapter:
        title += " vs trained RLM"
    engine = EngineConfig(max_model_len=episode_config.budget.context_window)

    async def _run() -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = []
        labels = lengths if not args.dataset else ["dataset"]
        if not arms:
            return await run_quality(tasks, None, episode_config, out, labels, title, arms=())
        base_arms = tuple(a for a in arms if a != "trained")
        if base_arms:
            model = build_model(args.model, role="root", config=engine)
            try:
                rows = await run_quality(
                    tasks,
                    model,
                    episode_config,
                    out,
                    labels,
                    title,
                    arms=base_arms,
                    concurrency=args.concurrency,
                )
            finally:
                await model.close()
        if "trained" in arms:
            trained = build_model(args.model, role="root", config=engine, adapter=args.adapter)
            try:
                rows = await run_quality(
                    tasks,
                    None,
                    episode_config,
                    out,
                    labels,
                    title,
                    trained_model=trained,
                    arms=("trained",),
                    concurrency=args.concurrency,
                )
            finally:
                await trained.close()
        return rows

    asyncio.run(_run())
    print((out / "quality.md").read_text())
    print(
        f"raw: {out}/{{rlm,trained}}/trajectories.jsonl, {out / 'plain.jsonl'}\nplot: {out / 'quality.png'}"
    )
    return 0

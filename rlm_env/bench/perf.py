"""`rlm-env bench perf`: what the environment costs next to the model, against its targets.

The figures, each a median of many repetitions, each comparison a ratio measured in the same
run (these machines are shared and noisy: absolute numbers from different runs do not compare):

1. REPL step: a trivial cell in the sandbox versus `exec` in-process (target <= 1 ms);
2. sandbox start to first result, cold and from the warm pool (targets <= 100 ms, <= 10 ms);
3. a 10M-token context: time from the file to a REPL that can use it (target <= 0.3 s), and
   the memory of 16 episodes on it versus its size (target <= 1.5x);
4. `llm_batch` through the RPC path with an instant model (target >= 10,000 sub-calls/s);
5. `llm_batch` on the real vLLM engine versus calling the engine client directly (>= 0.95);
6. share of an episode's wall time spent outside the model, on the default model (<= 5%);
7. vLLM's logprobs against a float32 transformers recomputation, bf16 and float32 engines
   (mean <= 0.05 nats bf16): the noise floor of GRPO's importance ratio (`logprob_figures.py`);
8. a soak of hostile episodes (every one runs an attack of a rotating mix) beside a bystander:
   wall time, host peak memory, bystander latency, leaks and labels (`hardening_figures.py`);
9. collection throughput (episodes/hour) and dataset size per episode, with a scripted root
   and with the default model (`collect_figures.py`);
12. a trivial custom-tool call's round trip next to a trivial `llm_query` on an instant model
   (`tool_figures.py`).

The figures themselves live in `sandbox_figures.py` (1-3), `subcall_figures.py` (4-6) and
`logprob_figures.py` (7), `hardening_figures.py` (8) and `collect_figures.py` (9); this module picks the repetitions, runs them in order, and writes the
report (`report.py`).
`--short` runs few repetitions on a 1M-token context and skips the engine figures (an engine
start alone takes ~40 s): the test suite uses it to keep this code alive, and its numbers are
printed, never asserted. `--skip-engine` skips figures 5 to 7. A figure that crashes becomes
an error row (and exit status 1); one that misses its target is reported, not raised.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rlm_env.bench import (
    collect_figures,
    hardening_figures,
    logprob_figures,
    sandbox_figures,
    subcall_figures,
    tool_figures,
    training_figures,
)
from rlm_env.bench.report import FIGURES, Figure, Row, machine, now_utc, render_markdown, skipped


@dataclass(frozen=True)
class Plan:
    """How many repetitions each figure gets."""

    step_reps: int
    start_reps: int
    context_tokens: int
    context_reps: int
    rpc_calls: int
    rpc_reps: int
    engine_k: int
    engine_pairs: int
    outside_episodes: int
    tool_calls: int = 2000
    """Sequential calls of each kind in figure 12 (tool_figures)."""
    tool_reps: int = 5
    soak_episodes: int = 32
    """Hostile episodes of figure 8 (hardening_figures.soak)."""
    logprob_prompts: int = 8
    logprob_tokens: int = 64


FULL = Plan(
    step_reps=3000,
    start_reps=40,
    context_tokens=10_000_000,
    context_reps=7,
    rpc_calls=10_000,
    rpc_reps=7,
    engine_k=32,
    engine_pairs=8,
    outside_episodes=6,
)
SHORT = Plan(
    step_reps=200,
    start_reps=5,
    context_tokens=1_000_000,
    context_reps=2,
    rpc_calls=2_000,
    rpc_reps=2,
    engine_k=8,
    engine_pairs=2,
    outside_episodes=2,
    soak_episodes=9,
    tool_calls=200,
    tool_reps=1,
)


ENGINE_FIGURES = ("engine_batch", "outside_model", "logprob_agreement", "grpo_step")
"""Figures that start real vLLM engines (skipped by --short and --skip-engine)."""


def _log(message: str) -> None:
    print(f"[bench perf] {message}", file=sys.stderr, flush=True)


async def _guarded(key: str, make: Callable[[], Awaitable[Figure]]) -> Figure:
    """Run one figure; a crash becomes an error row so the others still run."""
    title = dict(FIGURES)[key]
    _log(f"{title} ...")
    started = time.perf_counter()
    try:
        figure = await make()
    except Exception as e:  # noqa: BLE001 - reported in the table and the exit status
        traceback.print_exc()
        figure = Figure(key, [Row(title, f"error: {type(e).__name__}: {e}", "-", False)], {"error": repr(e)})
    figure.raw["seconds"] = round(time.perf_counter() - started, 1)
    for row in figure.rows:
        _log(f"  {row.figure}: {row.measured} (target {row.target})")
    return figure


async def _engine_figures(plan: Plan) -> list[Figure]:
    """Figures 5 and 6 on one vLLM engine (the default model), started once and shut down."""
    import ray

    from rlm_env.models import build_model, close_all_models

    had_ray = ray.is_initialized()
    _log("starting the default model on vLLM (~40 s) ...")
    started = time.perf_counter()
    try:
        client = build_model("default")
        start_s = time.perf_counter() - started
        batch = await _guarded(
            "engine_batch", lambda: subcall_figures.engine_batch(client, plan.engine_k, plan.engine_pairs)
        )
        outside = await _guarded(
            "outside_model", lambda: subcall_figures.outside_model(client, plan.outside_episodes)
        )
        collected = await _guarded(
            "collect",
            lambda: collect_figures.collect(client, 4 * plan.outside_episodes, plan.outside_episodes),
        )
        # Last: it reloads the engine's weights (with the base weights first, under a run name).
        grpo = await _guarded("grpo_step", lambda: training_figures.grpo_step(client, client.model))
    finally:
        await close_all_models()
        if not had_ray:
            ray.shutdown()
    batch.raw["engine_start_s"] = round(start_s, 1)
    batch.method += f" (The engine took {start_s:.0f} s to start, not counted.)"
    return [batch, outside, collected, grpo]


async def _learner_figure(short: bool) -> Figure:
    """The learner figure on the default model; --short: on a tiny random llama (keeps the code alive)."""
    import tempfile

    from rlm_env.models import ensure_default_model

    if not short:
        path = str(ensure_default_model())
        return await asyncio.to_thread(training_figures.learner_speed, path, sequences=4, reps=3)
    with tempfile.TemporaryDirectory(prefix="rlm-bench-tiny-") as tmp:
        path = str(training_figures.tiny_model_dir(tmp))
        return await asyncio.to_thread(training_figures.learner_speed, path, sequences=2, reps=1)


async def run(plan: Plan, *, engine: bool, engine_skip_reason: str = "") -> list[Figure]:
    figures = [
        await _guarded("repl_step", lambda: sandbox_figures.repl_step(plan.step_reps)),
        await _guarded("sandbox_start", lambda: sandbox_figures.sandbox_start(plan.start_reps)),
        await _guarded(
            "big_context", lambda: sandbox_figures.big_context(plan.context_tokens, plan.context_reps)
        ),
        await _guarded("rpc_instant", lambda: subcall_figures.rpc_instant(plan.rpc_calls, plan.rpc_reps)),
        await _guarded("hardening", lambda: hardening_figures.hardening(plan.soak_episodes)),
        await _guarded("learner_speed", lambda: _learner_figure(plan is SHORT)),
        await _guarded(
            "tool_roundtrip", lambda: tool_figures.tool_roundtrip(plan.tool_calls, plan.tool_reps)
        ),
    ]
    if engine:
        try:
            figures += await _engine_figures(plan)
        except Exception as e:  # noqa: BLE001 - the engine did not start: say so in its rows
            traceback.print_exc()
            for key in ("engine_batch", "outside_model", "collect", "grpo_step"):
                title = dict(FIGURES)[key]
                figures.append(
                    Figure(key, [Row(title, f"error: engine failed: {e}", "-", False)], {"error": repr(e)})
                )
        figures.append(
            await _guarded(
                "logprob_agreement",
                lambda: logprob_figures.logprob_agreement(plan.logprob_prompts, plan.logprob_tokens),
            )
        )
    else:
        figures += [skipped(key, engine_skip_reason) for key in ENGINE_FIGURES]
        figures.append(  # the scripted-root rows need no engine
            await _guarded("collect", lambda: collect_figures.collect(None, 4 * plan.outside_episodes, 0))
        )
    order = [key for key, _ in FIGURES]
    return sorted(figures, key=lambda f: order.index(f.key))


def main(args: Any) -> int:
    short = bool(getattr(args, "short", False))
    skip_engine = bool(getattr(args, "skip_engine", False))
    out = Path(getattr(args, "out", None) or "BENCHMARKS.md")
    plan = SHORT if short else FULL
    reason = "--skip-engine" if skip_engine else "--short: an engine start alone takes ~40 s" if short else ""
    command = "rlm-env bench perf" + (" --short" if short else "") + (" --skip-engine" if skip_engine else "")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    info = {"command": command, "date": now_utc(), "machine": machine(), "plan": plan.__dict__}
    started = time.perf_counter()
    figures = asyncio.run(run(plan, engine=not reason, engine_skip_reason=reason))
    info["total_s"] = round(time.perf_counter() - started, 1)
    info["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    if short:
        info["command"] += "  (a --short run: few repetitions, 1M tokens; not the figures of record)"
    text = render_markdown(info, figures)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(text.split("\n## How each figure", 1)[0])
    _log(f"wrote {out} in {info['total_s']:.0f} s")
    return 1 if any("error" in f.raw for f in figures) else 0

"""The shape of a perf result and how it is written down.

Every benchmark function returns a `Figure`: one or more table rows (what was measured, against
which target, met or not) plus the raw numbers behind them. `render_markdown` turns a run into
BENCHMARKS.md: the command, the date and the machine first (a number means little without
them), then the table, then how each figure was measured, then the raw JSON, so anyone can
check a row against its samples.

Rows whose target does not apply (context figures, the pieces of a total) say "-" under target
and met; a figure that was not run (`--skip-engine`) keeps its rows, marked "skipped", so the
table always has the same shape.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import statistics
import sys
from dataclasses import dataclass, field
from typing import Any

FIGURES = (
    ("repl_step", "1. REPL step round trip"),
    ("sandbox_start", "2. Sandbox start to first result"),
    ("big_context", "3. Large context"),
    ("rpc_instant", "4. llm_batch RPC, instant model"),
    ("engine_batch", "5. llm_batch on vLLM vs the engine directly"),
    ("outside_model", "6. Episode time outside the model"),
    ("logprob_agreement", "7. vLLM vs learner logprobs"),
    ("hardening", "8. Hostile soak"),
    ("collect", "9. Collection throughput"),
    ("learner_speed", "10. Learner throughput vs plain transformers"),
    ("grpo_step", "11. GRPO step: weight sync and time split"),
    ("tool_roundtrip", "12. Custom tool vs llm_query round trip"),
)
"""Every figure, in table order: (key, title). The test checks each title appears."""


@dataclass
class Row:
    figure: str
    measured: str
    target: str = "-"
    met: bool | None = None
    """None: no target applies to this row (or the figure was skipped)."""


@dataclass
class Figure:
    key: str
    rows: list[Row]
    raw: dict[str, Any] = field(default_factory=dict)
    method: str = ""
    """How it was measured, in a sentence or two (goes under the table)."""


def skipped(key: str, why: str) -> Figure:
    title = dict(FIGURES)[key]
    return Figure(key, [Row(title, f"skipped ({why})", "-", None)], {"skipped": why})


def median(samples: list[float]) -> float:
    return statistics.median(samples) if samples else float("nan")


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.3g} ms" if seconds < 0.1 else f"{seconds * 1000:.0f} ms"


def machine() -> dict[str, Any]:
    """What the numbers were measured on (CPU, cores, memory, load)."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    mem_gib = 0.0
    try:
        with open("/proc/meminfo") as f:
            mem_gib = int(next(line for line in f if line.startswith("MemTotal")).split()[1]) / (1 << 20)
    except (OSError, StopIteration, ValueError):
        pass
    return {
        "cpu": cpu,
        "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "memory_gib": round(mem_gib, 1),
        "kernel": platform.release(),
        "python": sys.version.split()[0],
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }


def _met(row: Row, was_skipped: bool) -> str:
    if was_skipped:
        return "skipped"
    if row.met is None:
        return "-"
    return "yes" if row.met else "**no**"


def render_markdown(run: dict[str, Any], figures: list[Figure]) -> str:
    """BENCHMARKS.md for one run: header, table, methods, raw JSON."""
    m = run["machine"]
    lines = [
        "# Benchmarks",
        "",
        "What the environment costs next to the model, against its targets. Produced by",
        "",
        f"    {run['command']}",
        "",
        f"on {run['date']} in {run['total_s']:.0f} s; {m['cpu']}, {m['cores']} cores, "
        f"{m['memory_gib']} GiB, Linux {m['kernel']}, Python {m['python']}; load average "
        f"{' / '.join(map(str, m['load_average']))} at the start, "
        f"{' / '.join(map(str, run['load_average_end']))} at the end (other jobs share this machine). "
        "Each figure is a median of many repetitions; each comparison is a ratio measured in this "
        "same run. See benchmarks/README.md for what each figure means.",
        "",
        "| figure | measured | target | met |",
        "|---|---|---|---|",
    ]
    for fig in figures:
        was_skipped = "skipped" in fig.raw
        for row in fig.rows:
            lines.append(f"| {row.figure} | {row.measured} | {row.target} | {_met(row, was_skipped)} |")
    missed = [
        row.figure for fig in figures for row in fig.rows if row.met is False and "skipped" not in fig.raw
    ]
    if missed:
        lines += ["", "Not met: " + "; ".join(missed) + ". Why is under the figure's method below."]
    lines += ["", "## How each figure was measured", ""]
    for fig in figures:
        if fig.method:
            lines.append(f"- **{dict(FIGURES)[fig.key]}.** {fig.method}")
    lines += [
        "",
        "## Raw results",
        "",
        "```json",
        json.dumps({"run": run, **{f.key: f.raw for f in figures}}, indent=2, default=str),
        "```",
        "",
    ]
    return "\n".join(lines)


def now_utc() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")

"""`rlm-env bench perf --short --skip-engine` runs end to end and writes every figure's row.

The numbers are machine- and load-dependent, so they are printed, never asserted: this test keeps
the benchmark code alive and checks the report's structure (the table, one row or more per
figure, the engine figures marked skipped, the command, the raw JSON).
"""

from __future__ import annotations

import json

import pytest

from rlm_env.bench.perf import ENGINE_FIGURES
from rlm_env.bench.report import FIGURES
from rlm_env.cli import main


@pytest.mark.slow
def test_bench_perf_short_writes_a_row_for_every_figure(tmp_path, capsys):
    out = tmp_path / "BENCHMARKS.md"
    status = main(["bench", "perf", "--short", "--skip-engine", "--out", str(out)])
    text = out.read_text()
    print(capsys.readouterr().out)  # the table, for whoever reads the test log

    assert status == 0, "a figure crashed (its row says error:)"
    assert "rlm-env bench perf --short --skip-engine" in text
    table = text.split("## How each figure was measured")[0]
    assert "| figure | measured | target | met |" in table
    rows = [line for line in table.splitlines() if line.startswith("| ") and not line.startswith("| figure")]
    for key, title in FIGURES:
        mine = [r for r in rows if r.startswith(f"| {title}")]
        assert mine, f"no row for figure {title!r}"
        cells = [c.strip() for c in mine[0].strip("|").split("|")]
        assert len(cells) == 4 and cells[3] in ("yes", "**no**", "-", "skipped"), mine[0]
        if key in ENGINE_FIGURES:
            assert cells[3] == "skipped"
        else:
            assert cells[3] != "skipped" and not cells[1].startswith("error")
    raw = json.loads(text.split("```json\n", 1)[1].split("\n```", 1)[0])
    assert {key for key, _ in FIGURES} <= raw.keys()
    assert raw["run"]["machine"]["cores"] >= 1

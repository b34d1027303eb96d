"""Figure 12: the round trip of a trivial custom-tool call next to a trivial `llm_query`.

A real Episode (bwrap sandbox) whose scripted root reply is one ```repl cell timing, inside the
REPL with `time.perf_counter`, N sequential `echo('q')` calls of the example tool
`rlm_env.tools.examples:echo` and N sequential `llm_query('q')` calls against `InstantModel`
(a model that costs nothing). Both travel the same way, a `call` frame out of the sandbox and a
`call_result` back; the tool call adds the hop to a thread of the host's tool pool and the JSON checks of
its arguments and result, the sub-call the router's budget, concurrency bound and token
accounting. Each call is also recorded (a ToolCall or a ModelCall), so the record's cost is in.
"""

from __future__ import annotations

from rlm_env.bench.report import Figure, Row, median
from rlm_env.episode import Episode
from rlm_env.episode.config import config_from_dict
from rlm_env.models.echo import InstantModel
from rlm_env.models.scripted import ScriptedPolicy
from rlm_env.tasks.base import Task


async def _one_run(calls: int) -> tuple[float, float]:
    """(seconds per tool call, seconds per llm_query) measured inside one cell."""
    cfg = config_from_dict(
        {
            "budget": {"max_sub_calls": calls},
            "sandbox": {"cell_timeout_s": 120},
            "tools": [{"function": "rlm_env.tools.examples:echo", "max_calls": calls}],
        }
    )
    code = (
        "import time\n"
        f"t0 = time.perf_counter()\nfor _ in range({calls}):\n    echo('q')\n"
        f"t1 = time.perf_counter()\nfor _ in range({calls}):\n    llm_query('q')\n"
        f"t2 = time.perf_counter()\nFINAL([(t1 - t0) / {calls}, (t2 - t1) / {calls}])"
    )
    policy = ScriptedPolicy([f"```repl\n{code}\n```"])
    record = await Episode(
        Task(id="bench-tool", context="x", question="?"), cfg, policy, InstantModel()
    ).run()
    content = record.answer.content
    if not isinstance(content, list) or len(record.tool_calls) != calls:
        raise RuntimeError(f"tool benchmark cell failed: {record.cells[0].error or record.answer}")
    return float(content[0]), float(content[1])


async def tool_roundtrip(calls: int, reps: int) -> Figure:
    await _one_run(min(calls, 100))  # warm up imports and code paths
    runs = [await _one_run(calls) for _ in range(reps)]
    tool_s, query_s = median([r[0] for r in runs]), median([r[1] for r in runs])
    title = "12. Custom tool vs llm_query round trip"
    return Figure(
        "tool_roundtrip",
        [
            Row(f"{title}: trivial tool call (echo)", f"{tool_s * 1e6:.0f} us per call", "-", None),
            Row(
                f"{title}: trivial llm_query, instant model",
                f"{query_s * 1e6:.0f} us per call (tool / llm_query: {tool_s / query_s:.2f}x)",
                "-",
                None,
            ),
        ],
        {"calls": calls, "reps": reps, "tool_s": [r[0] for r in runs], "llm_query_s": [r[1] for r in runs]},
        f"One real Episode per repetition (bwrap sandbox); its one cell times {calls:,} sequential "
        f"`echo('q')` tool calls then {calls:,} sequential `llm_query('q')` calls (InstantModel) with "
        f"time.perf_counter inside the REPL; median of {reps} episodes.",
    )

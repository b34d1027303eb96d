"""Sandbox latency, measured: `python -m rlm_env.sandbox.bench [--n 30]`.

Prints medians (and 90th percentiles) of:
- cold start to first cell result (`Sandbox.start` + `run_cell("1")`), per isolation set-up, so
  the cost of each layer shows: rlimit only; bwrap namespaces; + own uid; + seccomp (default);
- warm-pool acquire to first cell result;
- a trivial cell's round trip on a running sandbox, and a sub-call's round trip through a
  no-op handler;
- for comparison, `exec` of the same cell in-process (no isolation at all).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time

from rlm_env.sandbox import Sandbox, SandboxConfig, SandboxPool, prepare_context


def _stats(samples: list[float]) -> str:
    ms = sorted(s * 1000 for s in samples)
    p90 = ms[min(len(ms) - 1, int(0.9 * len(ms)))]
    return f"median {statistics.median(ms):8.3f} ms   p90 {p90:8.3f} ms   (n={len(ms)})"


async def _echo(fn: str, args: dict) -> str:
    return "ok"


async def _cold(setups: dict[str, SandboxConfig], ctx, n: int) -> dict[str, list[float]]:
    """Round-robin over the set-ups, so load drifting on a shared machine hits all alike."""
    out: dict[str, list[float]] = {name: [] for name in setups}
    for _ in range(n):
        for name, config in setups.items():
            t0 = time.perf_counter()
            sb = await Sandbox.start(config, ctx, _echo)
            await sb.run_cell("1")
            out[name].append(time.perf_counter() - t0)
            await sb.close()
    return out


async def main(n: int) -> None:
    ctx = prepare_context("benchmark context " * 100, store_dir=tempfile.mkdtemp(prefix="rlm-bench-"))
    setups = {
        "rlimit only": SandboxConfig(mode="rlimit"),
        "bwrap namespaces": SandboxConfig(mode="bwrap", drop_privileges=False, seccomp=False),
        "+ own uid": SandboxConfig(mode="bwrap", seccomp=False),
        "+ seccomp (default)": SandboxConfig(mode="bwrap"),
    }
    print("cold start -> first cell result")
    try:
        cold = await _cold(setups, ctx, n)
    except Exception as e:  # bwrap missing: say so and measure rlimit mode alone
        print(f"  (bwrap set-ups unavailable: {e})")
        cold = await _cold({"rlimit only": setups["rlimit only"]}, ctx, n)
    for name, samples in cold.items():
        print(f"  {name:22s} {_stats(samples)}")
    cfg = SandboxConfig()
    async with SandboxPool(cfg, size=2) as pool:
        warm = []
        for _ in range(n):
            await pool.fill()
            t0 = time.perf_counter()
            sb = await pool.acquire(ctx, _echo)
            await sb.run_cell("1")
            warm.append(time.perf_counter() - t0)
            await sb.close()
    print(f"warm pool acquire -> first result {_stats(warm)}")
    async with await Sandbox.start(cfg, ctx, _echo) as sb:
        for _ in range(50):
            await sb.run_cell("1")
        rtt = []
        for _ in range(n * 30):
            t0 = time.perf_counter()
            await sb.run_cell("1")
            rtt.append(time.perf_counter() - t0)
        sub = []
        await sb.run_cell("x = 0")
        for _ in range(n * 10):
            t0 = time.perf_counter()
            await sb.run_cell("x = llm_query('p')")
            sub.append(time.perf_counter() - t0)
    print(f"trivial cell round trip           {_stats(rtt)}")
    print(f"cell with one sub-call            {_stats(sub)}")
    ns: dict = {"context": "benchmark context " * 100}
    inproc = []
    for _ in range(n * 30):
        t0 = time.perf_counter()
        exec(compile("1", "<cell>", "exec"), ns)
        inproc.append(time.perf_counter() - t0)
    print(f"in-process exec (no isolation)    {_stats(inproc)}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=30, help="samples per measurement (x30 for round trips)")
    asyncio.run(main(parser.parse_args().n))

"""Load: 256 episodes at once on this machine, each in its own real bwrap sandbox.

Every episode is a scripted root doing two cells (the first reads its context and makes an
`llm_batch` of three sub-calls to an instant model, the second answers from variables the first
left). Between the two, all 256 episodes wait at a gate, so that at one known moment every
sandbox is alive: the test counts them there (proving the 256 really were concurrent) and
measures their memory (summed PSS, which charges shared pages once). Afterwards:

- every episode finished with its own right answer (contexts differ in length, so answers
  crossing between episodes would show);
- nothing hung (one overall timeout around everything);
- no process of ours is left: no process under a sandbox uid this test process hands out and
  no bwrap/worker whose command line names one (other test sessions may share this machine, so
  only our own uid range counts);
- the sandboxes' memory stayed bounded: their summed PSS at the gate, the moment every sandbox is
  alive (each after a cell and a sub-call batch), is under 8 GiB.

Timings are printed (`pytest -s`); they are reported, not asserted.
"""

from __future__ import annotations

import asyncio
import json
import os
import time

import pytest

from rlm_env.bench.memory import mib, smaps_rollup
from rlm_env.episode import Episode
from rlm_env.episode.config import config_from_dict
from rlm_env.models.echo import InstantModel
from rlm_env.models.scripted import ScriptedPolicy
from rlm_env.sandbox.launch import _uid_window
from rlm_env.tasks.base import Task

EPISODES = 256
OVERALL_TIMEOUT_S = 300
PSS_BOUND_BYTES = 8 << 30

LOAD_CONFIG = config_from_dict({"sandbox": {"startup_timeout_s": 120}})
"""The defaults but a longer start-up allowance: 256 workers starting at once on 2 shared cores
reach their hello after 5 s on a quiet machine and 17 s at a load average of 12, too close to
the default 20 s. This test is about correctness under load, not start latency (see the perf
figures for that)."""

FIRST_CELL = (
    "```repl\nn = len(context)\nparts = llm_batch([context[:8], context[-8:], 'q'])\nprint(n, parts)\n```"
)
SECOND_CELL = "```repl\nFINAL(f'{n}:{len(parts)}:{parts[0]}')\n```"


def our_sandbox_uids() -> set[int]:
    """The uids `launch.allocate_uid` can hand out in this process (1000, derived from our pid)."""
    first, size = _uid_window()
    base = (os.getpid() % 100_000) * 1000
    return {first + (base + c) % size for c in range(1000)}


def our_sandbox_processes(uids: set[int]) -> dict[int, str]:
    """pid -> what it is, for every live process that belongs to a sandbox of ours: running
    under one of our uids, or a bwrap/worker (still root) whose worker config names one."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/status") as f:
                uid = next(int(line.split()[1]) for line in f if line.startswith("Uid:"))
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except (OSError, StopIteration, ValueError):
            continue  # gone while we looked
        if uid in uids:
            found[int(entry)] = f"uid {uid}: {argv[0][:60]!r}"
            continue
        if b"<rlm-worker>" not in b" ".join(argv):
            continue
        try:
            config = json.loads(next(a for a in reversed(argv) if a.startswith(b"{")))
        except (StopIteration, ValueError):
            continue
        if config.get("uid") in uids:
            found[int(entry)] = f"{argv[0][:60]!r} for uid {config['uid']}"
    return found


class GatedPolicy(ScriptedPolicy):
    """The scripted root, holding its second reply until the test opens the gate."""

    def __init__(self, replies, gate: Gate):
        super().__init__(replies)
        self.gate = gate

    async def generate(self, messages, sampling, **kwargs):
        if len(self.seen) == 1:
            await self.gate.arrive()
        return await super().generate(messages, sampling, **kwargs)


class Gate:
    def __init__(self, expected: int):
        self.expected, self.arrived = expected, 0
        self.all_here, self.open = asyncio.Event(), asyncio.Event()

    async def arrive(self) -> None:
        self.arrived += 1
        if self.arrived == self.expected:
            self.all_here.set()
        await self.open.wait()


def _measure(uids: set[int]) -> tuple[int, int, int]:
    """Summed PSS and RSS of our sandbox processes, from one read of each, and how many."""
    rollups = [smaps_rollup(pid) for pid in our_sandbox_processes(uids)]
    return sum(r.get("Pss", 0) for r in rollups), sum(r.get("Rss", 0) for r in rollups), len(rollups)


@pytest.mark.slow
async def test_256_concurrent_episodes_finish_right_leave_nothing_and_stay_bounded():
    uids = our_sandbox_uids()
    before = our_sandbox_processes(uids)
    host_rss_before = smaps_rollup(os.getpid()).get("Rss", 0)
    gate = Gate(EPISODES)
    contexts = [f"episode {i}: " + "lorem ipsum " * (i % 97 + 1) for i in range(EPISODES)]
    episodes = [
        Episode(
            Task(id=f"load-{i}", context=ctx, question="?"),
            LOAD_CONFIG,
            GatedPolicy([FIRST_CELL, SECOND_CELL], gate),
            InstantModel(),
        )
        for i, ctx in enumerate(contexts)
    ]
    started = time.monotonic()
    runs = asyncio.gather(*(e.run() for e in episodes))
    try:
        try:
            await asyncio.wait_for(gate.all_here.wait(), OVERALL_TIMEOUT_S)
        except TimeoutError:
            pytest.fail(f"only {gate.arrived} of {EPISODES} episodes reached their second turn")
        at_gate_s = time.monotonic() - started
        gate_pss, gate_rss, alive = await asyncio.to_thread(_measure, uids)
        gate.open.set()
        records = await asyncio.wait_for(runs, OVERALL_TIMEOUT_S - at_gate_s)
    finally:
        gate.open.set()
        if not runs.done():  # a timeout: end the episodes (and their sandboxes) before checking
            runs.cancel()
            await asyncio.gather(*(e.close() for e in episodes), return_exceptions=True)
    total_s = time.monotonic() - started
    await asyncio.sleep(0.5)  # kill() has reaped bwrap; give the kernel a moment to drop the rest
    left = our_sandbox_processes(uids)
    host_rss_after = smaps_rollup(os.getpid()).get("Rss", 0)
    print(
        f"\n[load] {EPISODES} episodes: all at the gate after {at_gate_s:.1f} s, done in {total_s:.1f} s; "
        f"at the gate {alive} sandbox processes, summed PSS {mib(gate_pss)} MiB (RSS {mib(gate_rss)} MiB); "
        f"host RSS {mib(host_rss_before)} -> {mib(host_rss_after)} MiB"
    )

    wrong = [
        (r.episode_id, r.answer.content, r.stop_reason, r.flags.infra_errors)
        for r, ctx in zip(records, contexts, strict=True)
        if r.answer.status != "confirmed" or r.answer.content != f"{len(ctx)}:3:ok"
    ]
    assert not wrong, f"{len(wrong)} episodes went wrong, e.g. {wrong[:3]}"
    assert all(r.budget["sub_calls"] == 3 and len(r.cells) == 2 for r in records)
    # Each sandbox is bwrap plus its worker: all 256 were alive at once.
    assert alive >= 2 * EPISODES, f"only {alive} sandbox processes alive at the gate"
    leaked = {pid: what for pid, what in left.items() if pid not in before}
    assert not leaked, f"{len(leaked)} sandbox processes left behind, e.g. {list(leaked.items())[:5]}"
    assert gate_pss < PSS_BOUND_BYTES, f"256 sandboxes hold {mib(gate_pss)} MiB"

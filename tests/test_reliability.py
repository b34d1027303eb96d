"""Faults injected into real runs: a full disk, an interrupted evaluation, a hung sub-call engine,
a sandbox worker killed mid-cell. Each must end in a clear message or a flagged record, with no
finished episode lost or repeated."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess

import pytest

from rlm_env.episode import Episode, read_records
from rlm_env.episode.config import config_from_dict
from rlm_env.evaluate import EvalConfig, episode_id_for, run_eval
from rlm_env.models.scripted import ScriptedPolicy
from rlm_env.tasks.base import Task
from tests.fakes import UpperCaseSubModel, repl

ANSWER = repl("FINAL(len(context))")


def tasks(n: int) -> list[Task]:
    return [
        Task(id=f"rel-{i}", context="x" * (i + 1), question="How long?", expected_answer=str(i + 1))
        for i in range(n)
    ]


def always(reply: str, delay_s: float = 0.0) -> ScriptedPolicy:
    return ScriptedPolicy([lambda _m: reply] * 10_000, delay_s=delay_s)


async def test_interrupted_eval_resumes_without_losing_or_repeating(tmp_path):
    config = EvalConfig(out=str(tmp_path), concurrency=2)
    episode_config = config_from_dict({})
    all_tasks = tasks(8)
    run = asyncio.create_task(
        run_eval(config, episode_config, all_tasks, always(ANSWER, delay_s=0.2), UpperCaseSubModel(), None)
    )
    path = tmp_path / "trajectories.jsonl"
    while not path.exists() or len(read_records(path)) < 3:
        await asyncio.sleep(0.05)
    run.cancel()  # what Ctrl-C does to the running coroutine
    with pytest.raises(asyncio.CancelledError):
        await run
    first = {r.episode_id for r in read_records(path)}
    assert 3 <= len(first) < 8
    with open(path, "a") as f:
        f.write('{"schema_version": 1, "episode_id": "torn by a kill -9')  # a write cut mid-line

    policy = always(ANSWER)
    records = await run_eval(config, episode_config, all_tasks, policy, UpperCaseSubModel(), None)
    ids = [r.episode_id for r in read_records(path)]
    assert sorted(ids) == sorted(episode_id_for(t) for t in all_tasks)  # none lost, none twice
    assert len(policy.seen) == 8 - len(first)  # only the missing episodes ran again
    assert len(records) == 8 and all(r.answer.status == "confirmed" for r in records)


async def test_resumed_eval_runs_infra_failed_episodes_again_and_keeps_their_records(tmp_path):
    """An infra-failed episode measured nothing about the model: a resumed run runs it again,
    keeps the failed record aside, and leaves every other finished episode alone."""
    config = EvalConfig(out=str(tmp_path), concurrency=2)
    episode_config = config_from_dict({})
    all_tasks = tasks(4)
    await run_eval(config, episode_config, all_tasks, always(ANSWER), UpperCaseSubModel(), None)
    path = tmp_path / "trajectories.jsonl"
    records = read_records(path)
    failed_id = records[1].episode_id
    records[1].flags.infra_failure = True  # as an engine killed for memory leaves it
    path.write_text("".join(r.to_json() + "\n" for r in records))

    policy = always(ANSWER)
    again = await run_eval(config, episode_config, all_tasks, policy, UpperCaseSubModel(), None)
    assert len(policy.seen) == 1  # only the infra-failed episode ran again
    final = read_records(path)
    assert sorted(r.episode_id for r in final) == sorted(episode_id_for(t) for t in all_tasks)
    assert not any(r.flags.infra_failure for r in final) and len(again) == 4
    kept = read_records(tmp_path / "trajectories.infra.jsonl")
    assert [(r.episode_id, r.flags.infra_failure) for r in kept] == [(failed_id, True)]


@pytest.fixture
def tiny_disk(tmp_path):
    """A 96 KiB tmpfs: the real ENOSPC path. Needs root (CI and these machines run as root)."""
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root; this test runs in CI, which is root")
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=96k", "tmpfs", str(mount_point)], check=True)
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


async def test_disk_full_stops_cleanly_and_keeps_what_was_written(tiny_disk):
    config = EvalConfig(out=str(tiny_disk), concurrency=1)
    big_output = repl("print('y' * 15000)") + ""
    policy = ScriptedPolicy([lambda m: big_output if len(m) == 2 else ANSWER] * 10_000)
    with pytest.raises(SystemExit, match="could not write .*No space left"):
        await run_eval(config, config_from_dict({}), tasks(30), policy, UpperCaseSubModel(), None)
    saved = read_records(tiny_disk / "trajectories.jsonl")
    assert 1 <= len(saved) < 30
    assert all(r.answer.status == "confirmed" for r in saved)


class HangingSubModel:
    name = "hangs-forever"

    async def generate(self, *args, **kwargs):
        await asyncio.sleep(3600)

    async def close(self):
        return None


async def test_hung_sub_call_engine_is_an_infra_error_not_a_hang():
    cfg = config_from_dict({"budget": {"sub_call_timeout_s": 0.5}})
    reply = repl("try:\n    llm_query('hello?')\nexcept SubCallError as e:\n    FINAL(str(e))")
    episode = Episode(tasks(1)[0], cfg, ScriptedPolicy([reply]), HangingSubModel())
    record = await asyncio.wait_for(episode.run(), timeout=30)
    assert "no reply within" in record.answer.content
    assert record.flags.infra_failure and record.budget["sub_calls_failed"] == 1


async def test_worker_killed_mid_cell_is_restarted_and_flagged():
    policy = ScriptedPolicy([repl("kept = 1"), repl("import time; time.sleep(5)"), repl("FINAL('survived')")])
    episode = Episode(tasks(1)[0], config_from_dict({}), policy, UpperCaseSubModel())

    async def kill_worker_soon():
        while len(episode.record.cells) < 1:  # the first cell is done: the second one is next
            await asyncio.sleep(0.01)
        await asyncio.sleep(1.0)  # well inside the second cell's 5 s sleep
        for pid in episode.sandbox.pids():
            os.kill(pid, signal.SIGKILL)

    killer = asyncio.create_task(kill_worker_soon())
    record = await episode.run()
    await killer
    assert record.cells[1].worker_restarted
    assert "restarted" in policy.seen[2][-1]["content"]
    assert record.answer.content == "survived"
    assert record.cells[1].exit_signal == 9
    assert record.flags.infra_suspected and not record.flags.infra_failure


# ---- issue 13: the model's code cannot forge an infrastructure label, nor stall a run ----------

FORGE_DURATION = repl(
    "_g = llm_query.__globals__\n_orig = _g['run_cell']\n"
    "def _forged(code, _orig=_orig):\n    r = _orig(code)\n    r['duration_s'] = 10**400\n    return r\n"
    "_g['run_cell'] = _forged"
)


async def test_a_forged_result_frame_is_the_models_violation_not_infra():
    policy = ScriptedPolicy([FORGE_DURATION, repl("print('hi')"), repl("FINAL('after')")])
    episode = Episode(tasks(1)[0], config_from_dict({}), policy, UpperCaseSubModel())
    record = await asyncio.wait_for(episode.run(), timeout=60)
    assert record.stop_reason == "answer" and record.answer.content == "after"
    assert not record.flags.infra_failure and record.flags.infra_errors == []
    forged = record.cells[1]
    assert forged.worker_restarted and forged.error.startswith("ProtocolViolation"), forged
    assert forged.protocol_violation and not record.cells[0].protocol_violation
    assert not record.flags.infra_suspected  # the host restarted it for cause: nothing ambiguous
    assert "broke the host protocol" in policy.seen[2][-1]["content"]


async def test_the_hard_deadline_ends_a_stuck_episode_as_its_own_budget():
    from rlm_env.evaluate import hard_deadline_s, run_with_hard_deadline
    from tests.sandbox_helpers import assert_no_leaked_processes

    cfg = config_from_dict({"sandbox": {"cell_timeout_s": 60}, "budget": {"wall_clock_s": 5}})
    assert hard_deadline_s(cfg) == 5 + 60 + 5 + 20 + 30  # budget + cell + kill grace + start + margin
    policy = ScriptedPolicy([repl("import time; time.sleep(60)")])
    episode = Episode(tasks(1)[0], cfg, policy, UpperCaseSubModel())
    t0 = asyncio.get_running_loop().time()
    record = await run_with_hard_deadline(episode, deadline_s=1.5)
    assert asyncio.get_running_loop().time() - t0 < 10
    assert record.stop_reason == "wall_clock" and not record.flags.infra_failure
    assert episode.sandbox is None
    assert_no_leaked_processes()


async def test_a_child_rlms_context_file_is_removed_when_it_ends():
    """rlm_query children once left their prompt in the shared context store forever."""
    prompt = f"child prompt {os.getpid()}-{asyncio.get_running_loop().time()}"
    policy = ScriptedPolicy(
        [repl(f"r = rlm_query({prompt!r})"), repl("FINAL('from the child')"), repl("FINAL(r)")]
    )
    cfg = config_from_dict({"budget": {"max_depth": 2}})
    episode = Episode(tasks(1)[0], cfg, policy, UpperCaseSubModel())
    record = await asyncio.wait_for(episode.run(), timeout=60)
    assert record.answer.content == "from the child" and len(record.children) == 1
    from rlm_env.sandbox.context import default_store_dir

    store = default_store_dir()
    child_sha, root_sha = record.children[0].context_meta["sha256"], record.context_meta["sha256"]
    assert not (store / f"{child_sha}.txt").exists()
    assert (store / f"{root_sha}.txt").exists()  # a task's context is shared: kept (swept when stale)

"""Warm pool, clean shutdown, isolation-layer report, and the rlimit-only fallback."""

# ruff: noqa: F811 - pytest fixtures imported from tests.sandbox_helpers are test arguments

from __future__ import annotations

import asyncio
import time

import pytest

from rlm_env.sandbox import Sandbox, SandboxConfig, SandboxPool, SandboxUnavailable, prepare_context
from rlm_env.sandbox import launch as launch_mod
from tests.sandbox_helpers import (  # noqa: F401 - the fixtures are used as test arguments
    FAST,
    RecordingHandler,
    alive,
    descendants,
    needs_bwrap,
    pids_of_uid,
    sandboxes,
    wait_gone,
)


async def test_pool_acquire_gives_ready_sandboxes_and_refills(tmp_path):
    ctx_a = prepare_context("alpha", store_dir=tmp_path)
    ctx_b = prepare_context(["b1", "b2"], store_dir=tmp_path)
    async with SandboxPool(FAST, size=2) as pool:
        await pool.fill()
        assert pool.idle == 2
        t0 = time.monotonic()
        sa = await pool.acquire(ctx_a, RecordingHandler())
        first = await sa.run_cell("context")
        warm = time.monotonic() - t0
        sb = await pool.acquire(ctx_b, RecordingHandler())
        assert first.output == "'alpha'\n" and (await sb.run_cell("context")).output == "['b1', 'b2']\n"
        assert (await sa.run_cell("llm_query('q')")).output == "'llm_query:q'\n"
        assert warm < 0.5
        await pool.fill()
        assert pool.idle == 2
        await sa.close()
        await sb.close()
        idle_pids = [w.pid for w in pool._idle]
    assert not await wait_gone(idle_pids)


async def test_pool_without_idle_workers_cold_starts(tmp_path):
    pool = SandboxPool(FAST, size=0)
    sb = await pool.acquire(prepare_context("cold", store_dir=tmp_path))
    assert (await sb.run_cell("context")).output == "'cold'\n"
    await sb.close()
    await pool.close()
    with pytest.raises(RuntimeError):
        await pool.acquire(prepare_context("x", store_dir=tmp_path))


async def test_pool_skips_a_dead_idle_worker(tmp_path):
    async with SandboxPool(FAST, size=1) as pool:
        await pool.fill()
        dead = pool._idle[0]
        await dead.kill()
        sb = await pool.acquire(prepare_context("fresh", store_dir=tmp_path))
        assert sb.worker is not dead and (await sb.run_cell("context")).output == "'fresh'\n"
        await sb.close()


async def _all_pids(sb: Sandbox) -> set[int]:
    w = sb.worker
    pids = {w.pid} | descendants(w.pid)
    if w.uid is not None:
        pids |= set(pids_of_uid(w.uid))
    return pids


@needs_bwrap
async def test_close_leaves_no_process(sandboxes):
    sb = await sandboxes(config=FAST.model_copy(update={"seccomp": False}))
    r = await sb.run_cell(
        "import os, time, threading\n"
        "threading.Thread(target=time.sleep, args=(300,), daemon=False).start()\n"
        "for _ in range(3):\n"
        "    if os.fork() == 0:\n"
        "        os.setsid()\n"
        "        if os.fork() == 0:\n"
        "            time.sleep(300)\n"
        "        os._exit(0)\n"
        "time.sleep(0.2)"
    )
    assert r.error is None, r
    pids = await _all_pids(sb)
    uid = sb.worker.uid
    assert len(pids_of_uid(uid)) >= 4  # the worker and three double-forked, setsid grandchildren
    await sb.close()
    assert not await wait_gone(pids)
    assert pids_of_uid(uid) == []


async def test_rlimit_mode_works_and_warns(sandboxes):
    cfg = SandboxConfig(mode="rlimit", cell_timeout_s=0.5, kill_grace_s=0.5, memory_limit_mb=512)
    sb = await sandboxes(config=cfg, context="plain")
    assert (
        sb.mode == "rlimit" and "rlimit-only" in sb.mode_warning and "Do not run untrusted" in sb.mode_warning
    )
    assert (await sb.run_cell("x = context.upper()\nx")).output == "'PLAIN'\n"
    r = await sb.run_cell("while True:\n    pass")
    assert r.timed_out and not r.worker_restarted
    assert "MemoryError" in (await sb.run_cell("bytearray(2 ** 30)")).error
    assert (await sb.run_cell("llm_query('a')")).output == "'llm_query:a'\n"
    pid = sb.worker.pid
    await sb.close()
    assert not alive(pid)


@needs_bwrap
async def test_bwrap_mode_reports_its_layers(sandboxes):
    sb = await sandboxes()
    assert sb.mode == "bwrap" and sb.mode_warning is None
    layers = sb.layers
    assert layers["seccomp"] and layers["no_new_privs"] and layers["cap_eff"] == "0000000000000000"
    assert layers["uid"] not in (0, None) and layers["pid"] == 2 and layers["rlimit_failures"] == []


def test_bwrap_missing_is_a_clear_error_or_a_loud_fallback(monkeypatch):
    monkeypatch.setattr(launch_mod, "probe_bwrap", lambda: (False, "bwrap is not installed"))
    with pytest.raises(SandboxUnavailable, match="bwrap is not installed"):
        launch_mod.resolve_mode(SandboxConfig(mode="bwrap"))
    mode, warning = launch_mod.resolve_mode(SandboxConfig(mode="auto"))
    assert mode == "rlimit" and "bwrap is not installed" in warning


async def test_concurrent_sandboxes_are_independent(sandboxes):
    boxes = await asyncio.gather(*(sandboxes(context=f"ctx{i}") for i in range(4)))
    outs = await asyncio.gather(*(sb.run_cell("context") for sb in boxes))
    assert [o.output for o in outs] == [f"'ctx{i}'\n" for i in range(4)]

"""`rlm-env view`: the pages from a collected run (fast, through FastAPI's test client), and the
real thing in a headless browser (Debian's chromium driven by playwright) over the CLI server."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from rewards import Rubric, RubricConfig
from rlm_env.collect.run import CollectConfig, collect_worker
from rlm_env.episode import TrajectoryWriter, read_records
from rlm_env.episode.config import config_from_dict
from rlm_env.episode.record import ModelCall
from rlm_env.viewer import create_app
from rlm_env.viewer.runs import SORT_KEYS, episode_tree
from tests.collect_helpers import scripted_models

REPO = Path(__file__).resolve().parents[1]
FILE = "workers/w0/trajectories.jsonl"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A real collected run (scripted root: sub-calls and a child episode in every episode)."""
    out = tmp_path_factory.mktemp("view") / "run"
    cfg = CollectConfig(task="niah", lengths=["1k", "2k"], episodes=2, concurrency=2, out=str(out))
    root, sub = scripted_models()
    episode = config_from_dict({}, {"budget.max_depth": 2})
    asyncio.run(collect_worker(cfg, episode, root, sub, Rubric(RubricConfig())))
    return out


def test_table_sorts_and_filters(run_dir):
    client = TestClient(create_app(run_dir))
    page = client.get("/").text
    assert page.count('class="episode-link"') == 4 and "4 of 4 episodes" in page
    page = client.get("/", params={"length": "2k"}).text
    assert page.count('class="episode-link"') == 2 and "niah-train-2000-s0" in page and "1000-s0" not in page
    rewards = {r.episode_id: r.rewards["reward"] for r in read_records(run_dir / FILE)}
    for order in ("asc", "desc"):
        page = client.get("/", params={"sort": "reward", "order": order}).text
        shown = [e for e in sorted(rewards, key=lambda e: page.index(f">{e}<"))]
        values = [rewards[e] for e in shown]
        assert values == sorted(values, reverse=order == "desc")
    assert client.get("/", params={"min_reward": "0.5"}).text.count('class="episode-link"') == sum(
        v >= 0.5 for v in rewards.values()
    )
    assert "<th>from</th>" not in page  # one file: no column saying which
    for key in SORT_KEYS:  # every column sorts both ways
        for order in ("asc", "desc"):
            assert client.get("/", params={"sort": key, "order": order}).status_code == 200


def test_episode_tree_places_cells_sub_calls_and_children_under_their_turn(run_dir):
    record = read_records(run_dir / FILE)[0]
    tree = episode_tree(record)
    assert [t.call.id for t in tree.turns] == ["root-0", "root-1"]
    assert "llm_query" in tree.turns[0].cells[0].code and "FINAL" in tree.turns[1].cells[0].code
    assert [s.parent_id for s in tree.turns[0].sub_calls] == ["root-0"] and not tree.turns[1].sub_calls
    (child,) = tree.turns[0].children
    assert child.record.depth == 1 and "FINAL" in child.turns[0].cells[0].code
    page = (
        TestClient(create_app(run_dir)).get("/episode", params={"file": FILE, "id": record.episode_id}).text
    )
    for text in (
        "SUMMARIZE IN FIVE WORDS",
        "child episode",
        "correctness",
        "REPL output",
    ):
        assert text in page


def test_a_huge_context_or_prompt_never_reaches_the_page(run_dir, tmp_path):
    record = read_records(run_dir / FILE)[0]
    big = "x" * 3_000_000  # a sub-call that carried a 3 MB slice
    record.calls.append(
        ModelCall(
            id="sub-99", role="sub", depth=0, parent_id="root-0", messages=[{"role": "user", "content": big}]
        )
    )
    record.context_meta.update(length=4_000_000, size_bytes=4_000_000)
    with TrajectoryWriter(tmp_path / "trajectories.jsonl") as w:
        w.write(record)
    client = TestClient(create_app(tmp_path))
    page = client.get("/episode", params={"file": "trajectories.jsonl", "id": record.episode_id}).text
    assert len(page) < 100_000 and "4,000,000 bytes" in page and "more characters not shown" in page
    assert client.get("/episode", params={"file": "../../etc/passwd", "id": "x"}).status_code == 404


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_the_viewer_in_a_real_headless_browser(run_dir, tmp_path):
    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    assert chromium, "Debian's chromium is installed by `make setup` (system-deps)"
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    server = subprocess.Popen(
        [sys.executable, "-m", "rlm_env.cli", "view", str(run_dir), "--port", str(port)], cwd=REPO, env=env
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline and server.poll() is None, "viewer did not start"
                time.sleep(0.2)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
            try:
                page = browser.new_page(viewport={"width": 1280, "height": 1100})
                page.goto(f"http://127.0.0.1:{port}/", timeout=30_000)
                assert page.locator("a.episode-link").count() == 4
                page.select_option("select[name=length]", "1k")
                page.click("button[type=submit]")
                assert page.locator("a.episode-link").count() == 2
                page.click("th a:has-text('reward')")  # sort, keeping the filter
                assert page.locator("a.episode-link").count() == 2
                page.locator("a.episode-link").first.click()
                page.wait_for_selector("#context")
                assert "metadata only" in page.inner_text("#context")
                assert "correctness" in page.inner_text("#rewards")
                sub_prompt = page.locator("details.subcall pre.sub-prompt").first
                assert not sub_prompt.is_visible()
                page.locator("details.subcall > summary").first.click()  # expand a sub-call
                assert sub_prompt.is_visible() and "Summarize in five words" in sub_prompt.inner_text()
                page.locator("details.child > summary").first.click()  # and the child episode
                assert page.locator("details.child details.turn").first.count() == 1
                shot = tmp_path / "viewer.png"
                page.screenshot(path=str(shot), full_page=True)
                assert shot.stat().st_size > 20_000 and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
                if os.environ.get("RLM_VIEWER_SCREENSHOT"):  # regenerate the screenshot in docs/
                    shutil.copy(shot, os.environ["RLM_VIEWER_SCREENSHOT"])
            finally:
                browser.close()
    finally:
        server.terminate()
        server.wait(timeout=10)


def test_a_folder_of_several_runs_says_where_each_episode_comes_from(run_dir, tmp_path):
    for worker in ("a", "b"):
        shutil.copytree(run_dir / "workers" / "w0", tmp_path / "workers" / worker)
    page = TestClient(create_app(tmp_path)).get("/").text
    assert page.count('class="episode-link"') == 8 and "<th>from</th>" in page
    assert page.count(">workers/a<") == page.count(">workers/b<") == 4

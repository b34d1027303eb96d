"""The synchronous face (reset/step) and the `rlm-env play` command, on the real sandbox."""

from __future__ import annotations

import json
import subprocess
import sys
from io import StringIO

from rlm_env.episode import TextEpisode
from rlm_env.episode.config import config_from_dict
from rlm_env.play import read_replies
from rlm_env.tasks.base import Task
from tests.fakes import UpperCaseSubModel, repl


def test_read_replies_splits_on_separator_lines():
    stream = StringIO("a\nb\n---\nc\n  ---  \n\n")
    assert list(read_replies(stream)) == ["a\nb\n", "c\n"]


def test_text_episode_reset_and_step():
    env = TextEpisode(config_from_dict({"budget": {"max_root_turns": 3}}), UpperCaseSubModel())
    try:
        task = Task(id="x", context="needle=42 in a haystack", question="What is the needle?")
        observation, info = env.reset(task)
        assert "Question: What is the needle?" in observation and info["sandbox_mode"] == "bwrap"
        obs, reward, terminated, truncated, info = env.step(
            repl("v = context.split('=')[1].split()[0]\nprint(v)")
        )
        assert "42" in obs and (terminated, truncated) == (False, False)
        obs, reward, terminated, truncated, info = env.step(repl("FINAL(int(v))"))
        assert terminated and not truncated and info["answer"]["content"] == 42
        # A new episode after the first ended; running out of turns is truncation.
        env.reset(task)
        for _ in range(2):
            _, _, terminated, truncated, _ = env.step("no code here")
        _, _, terminated, truncated, info = env.step("still no code")
        assert (terminated, truncated, info["stop_reason"]) == (False, True, "max_turns")
    finally:
        env.close()


def test_play_command_runs_a_real_sandboxed_episode(tmp_path):
    context = tmp_path / "notes.txt"
    context.write_text("line\n" * 1000 + "the password is swordfish\n")
    replies = (
        repl("import re\nm = re.search(r'password is (\\w+)', context)\nprint(m.group(1))")
        + "---\n"
        + repl("echo = llm_query('ping')\nprint(echo)")
        + "---\n"
        + repl("FINAL(m.group(1))")
    )
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "rlm_env.cli",
            "play",
            "--context",
            str(context),
            "--question",
            "What is the password?",
        ],
        input=replies,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "swordfish" in proc.stdout and "=== observation ===" in proc.stdout
    assert "ping" in proc.stdout  # the echo sub-model answered llm_query
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["answer"] == "swordfish" and summary["status"] == "confirmed"
    assert summary["stop_reason"] == "answer" and summary["sandbox_mode"] == "bwrap"
    assert summary["flags"]["infra_failure"] is False


def test_play_command_reports_abort_when_replies_run_out(tmp_path):
    context = tmp_path / "c.txt"
    context.write_text("hello")
    proc = subprocess.run(
        [sys.executable, "-m", "rlm_env.cli", "play", "--context", str(context), "--question", "q"],
        input=repl("print(len(context))"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["stop_reason"] == "aborted" and summary["status"] == "none"

"""The gymnasium adapter: registration, honest text spaces, check_env, a vector env of 4, and one
episode whose sub-calls run on the real vLLM engine."""

from __future__ import annotations

import subprocess
import sys

import gymnasium
import pytest
from gymnasium.utils.env_checker import check_env

import rlm_env
from rlm_env.adapters.gymnasium_env import AnyText, RLMEnv
from rlm_env.adapters.rollouts import training_exclusion
from tests.fakes import repl

SMALL = {"budget": {"max_root_turns": 4}}


def make_env(**kwargs):
    kwargs.setdefault("lengths", ["2k"])
    kwargs.setdefault("sub_model", "echo")
    kwargs.setdefault("episode_config", SMALL)
    return gymnasium.make("rlm_env/RLM-niah-v0", **kwargs)


def test_import_is_light_and_registers_every_family():
    code = (
        "import sys, gymnasium, rlm_env\n"
        "heavy = {'torch', 'vllm', 'verifiers', 'trl', 'transformers', 'ray', 'skyrl_gym'}\n"
        "print(sorted(heavy & {m.split('.')[0] for m in sys.modules}))\n"
        "print(sorted(k for k in gymnasium.registry if k.startswith('rlm_env/')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    heavy, ids = out.stdout.strip().splitlines()
    assert heavy == "[]"
    from rlm_env.tasks import TASK_FAMILIES

    assert tuple(TASK_FAMILIES) == rlm_env.GYM_FAMILIES
    for family in TASK_FAMILIES:
        assert f"rlm_env/RLM-{family}-v0" in ids
    assert "rlm_env/RLM-v0" in ids


def test_text_space_is_honest_about_any_string():
    space = AnyText(100)
    code = "for k in range(3):\n\tprint(f'{k} → ü')\n"
    assert space.contains(code) and space.contains("") and space.contains("日本語\x00")
    assert not space.contains("x" * 101) and not space.contains(b"bytes")
    # The stock space would reject real code: that is the reason for AnyText.
    assert not gymnasium.spaces.Text(100).contains(code)
    space.seed(0)
    sample = space.sample()
    assert space.contains(sample) and set(sample) <= set(space.character_set)


def test_check_env_passes_and_reset_is_seeded():
    env = make_env()
    try:
        check_env(env.unwrapped)
        first, _ = env.reset(seed=7)
        again, _ = env.reset(seed=7)
        other, _ = env.reset(seed=8)
        assert first == again and first != other
        assert "Question:" in first
    finally:
        env.close()
        env.close()  # idempotent


def test_an_episode_through_the_env_records_everything():
    env = make_env()
    try:
        obs, info = env.reset(seed=3)
        task = env.unwrapped._task
        assert info["task_id"] == task.id and info["sandbox_mode"] == "bwrap"
        obs, reward, terminated, truncated, info = env.step(
            repl("import re\nm = re.findall(r'\\d{5,}', context)\nprint(len(m), llm_query('ping'))")
        )
        assert not (terminated or truncated) and "ping" in obs and info["sub_calls"] == 1
        obs, reward, terminated, truncated, info = env.step(repl(f"FINAL({task.expected_answer!r})"))
        assert terminated and not truncated and obs == ""
        record = info["record"]
        assert record.answer.status == "confirmed" and record.rewards["correctness"] == 1.0
        assert reward == pytest.approx(record.rewards["reward"]) and reward == 1.0
        assert len(record.cells) == 2 and record.calls[0].role == "root"
        assert [c.role for c in record.calls].count("sub") == 1
        assert info["training_exclusion"] == training_exclusion(record)  # the record's own verdict
        with pytest.raises(RuntimeError):
            env.unwrapped._text.step("after the end")
    finally:
        env.close()


def test_vector_env_of_four_runs_episodes():
    envs = gymnasium.vector.SyncVectorEnv([lambda: make_env() for _ in range(4)])
    try:
        obs, infos = envs.reset(seed=11)
        assert len(obs) == 4 and len(set(obs)) == 4  # four different tasks
        actions = [repl("print(llm_query(context[:20]))")] * 4
        obs, rewards, terminated, truncated, infos = envs.step(actions)
        assert list(infos["sub_calls"]) == [1, 1, 1, 1] and not terminated.any()
        obs, rewards, terminated, truncated, infos = envs.step([repl("FINAL('nope')")] * 4)
        assert terminated.all() and list(rewards) == [0.0] * 4
        records = infos["record"]
        assert all(r.answer.content == "nope" for r in records)
        assert len({r.episode_id for r in records}) == 4
    finally:
        envs.close()


@pytest.mark.slow
@pytest.mark.engine
def test_sub_calls_run_on_the_real_engine(vllm_client):
    config = {**SMALL, "sub_call_policy": "trained"}  # keep the sub-calls' token ids in the record
    env = RLMEnv(lengths=["2k"], sub_model=vllm_client, episode_config=config)
    try:
        env.reset(seed=1)
        obs, *_ = env.step(repl("r = llm_query('Say hello.')\nprint(type(r).__name__, len(r) > 0)"))
        assert "str True" in obs
        *_, terminated, truncated, info = env.step(repl("FINAL('x')"))
        record = info["record"]
        sub = [c for c in record.calls if c.role == "sub"]
        assert len(sub) == 1 and sub[0].model == vllm_client.name
        assert sub[0].completion_token_ids and len(sub[0].logprobs) == len(sub[0].completion_token_ids)
    finally:
        env.close()

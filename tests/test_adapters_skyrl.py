"""The SkyRL adapter: a skyrl_gym BaseTextEnv around our episode, driven by hand (SkyRL's own
trainer needs GPUs), with a scripted reply sequence and with the real engine as the root."""

from __future__ import annotations

import asyncio

import pytest

skyrl_gym = pytest.importorskip("skyrl_gym")

from rlm_env.adapters.skyrl_env import ENV_ID, RLMTextEnv  # noqa: E402
from rlm_env.models.base import SamplingParams  # noqa: E402
from tests.fakes import repl  # noqa: E402

SMALL = {
    "budget": {"max_root_turns": 3},
    "root_sampling": {"max_tokens": 48},
    "sub_sampling": {"max_tokens": 16},
}
TASK = {"family": "niah", "length": "2k", "seed": 5, "split": "train"}


def test_registered_and_driven_by_hand():
    assert ENV_ID in skyrl_gym.registry
    env = skyrl_gym.make(ENV_ID, env_config={"sub_model": "echo", "episode": SMALL}, extras={"task": TASK})
    assert isinstance(env, RLMTextEnv) and env.max_turns == 3
    try:
        messages, info = env.init([{"role": "user", "content": "ignored: the RLM builds its own prompt"}])
        assert [m["role"] for m in messages] == ["system", "user"] and info["sandbox_mode"] == "bwrap"
        assert env.task.question in messages[-1]["content"]
        assert env.task.context not in messages[-1]["content"]  # metadata only, never the context
        out = env.step(repl("print(len(context) > 1000, llm_query('pong'))"))
        assert not out["done"] and out["reward"] == 0.0
        assert out["observations"][0]["role"] == "user" and "True pong" in out["observations"][0]["content"]
        out = env.step(repl(f"FINAL({env.task.expected_answer!r})"))
        assert out["done"] and out["observations"] == [] and out["reward"] == 1.0
        record = out["metadata"]["record"]
        assert record["answer"]["status"] == "confirmed" and record["rewards"]["correctness"] == 1.0
        assert len(record["cells"]) == 2 and record["sandbox_mode"] == "bwrap"
        assert env.get_metrics()["sub_calls"] == 1.0
    finally:
        env.close()
        env.close()


def test_turn_limit_ends_the_episode_as_truncation():
    env = RLMTextEnv({"sub_model": "echo", "episode": SMALL}, {"task": TASK})
    try:
        env.init([])
        outs = [env.step("no code, just words") for _ in range(3)]
        assert [o["done"] for o in outs] == [False, False, True]
        assert outs[-1]["metadata"]["stop_reason"] == "max_turns" and outs[-1]["reward"] == 0.0
    finally:
        env.close()


@pytest.mark.slow
@pytest.mark.engine
def test_a_generator_loop_with_the_real_engine_as_root(vllm_client):
    """What SkyRL's generator does, by hand: sample the root on vLLM, step the env, repeat."""
    env = RLMTextEnv({"sub_model": vllm_client, "episode": SMALL}, {"task": TASK})
    try:
        messages, _ = env.init([])
        done, turns = False, 0
        while not done:
            completion = asyncio.run(
                vllm_client.generate(messages, SamplingParams(max_tokens=48, temperature=0.0))
            )
            assert completion.completion_token_ids  # the generator's own training tokens
            out = env.step(completion.text)
            messages = messages + [{"role": "assistant", "content": completion.text}] + out["observations"]
            done, turns = out["done"], turns + 1
        record = out["metadata"]["record"]
        assert turns <= 3 and len(record["calls"]) >= turns
        assert [c["completion_text"] for c in record["calls"] if c["role"] == "root"][0] == messages[2][
            "content"
        ]
        assert record["flags"]["infra_failure"] is False and "reward" in record["rewards"]
    finally:
        env.close()

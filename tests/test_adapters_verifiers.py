"""The verifiers 0.4.0 hub entry: discovery of `rlm-env`, the taskset by reference, and `vf-eval`
end to end against a local OpenAI-compatible vLLM server of the default model (verifiers' default
eval client: its train client cannot parse vLLM 0.32's /inference/v1/generate logprobs, see
rlm_env/adapters/verifiers_env.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

vf = pytest.importorskip("verifiers.v1")

VF_EVAL = str(Path(sys.executable).with_name("vf-eval"))


def test_discovery_finds_exactly_our_taskset_and_harness():
    from verifiers.v1.utils.loaders import default_harness_id, harness_class, taskset_class

    import rlm_env
    from rlm_env.adapters.verifiers_env import RLMHarness, RLMTaskset

    assert taskset_class("rlm-env") is RLMTaskset
    assert default_harness_id("rlm-env") == "rlm-env" and harness_class("rlm-env") is RLMHarness
    assert "RLMTaskset" in rlm_env.__all__ and RLMHarness.NEEDS_CONTAINER is False


def test_taskset_carries_contexts_by_reference(tmp_path):
    from rlm_env.adapters.verifiers_env import RLMTaskset, RLMTasksetConfig, materialise

    tasks = list(RLMTaskset(RLMTasksetConfig(family="niah", lengths=["2k", "4k"], count=2, split="train")))
    assert len(tasks) == 4 and len({t.key for t in tasks}) == 4
    data = tasks[3].data
    assert (data.family, data.length, data.seed, data.split) == ("niah", 4000, 1, "train")
    full = materialise(data)
    wire = json.dumps(data.model_dump(mode="json"))
    assert full.id == data.id and full.question == data.prompt and full.expected_answer == data.answer
    assert len(full.context) > 10 * len(wire) and full.context[1000:1100] not in wire  # never inlined
    rows = tmp_path / "mine.jsonl"
    rows.write_text(
        "\n".join(
            json.dumps({"context": f"code is {i}" * 50, "question": "code?", "answer": str(i)})
            for i in range(3)
        )
    )
    mine = list(RLMTaskset(RLMTasksetConfig(dataset=str(rows), count=2, split="")))
    assert [t.data.row for t in mine] == [0, 1] and materialise(mine[1].data).expected_answer == "1"
    assert "code is" not in json.dumps(mine[1].data.model_dump(mode="json"))


@pytest.fixture(scope="module")
def openai_server(default_model_path):
    """vLLM's OpenAI-compatible server of the default model (what `vf-eval --client.base-url` needs)."""
    from rlm_env.models.config import EngineConfig
    from rlm_env.models.openai_server import launch_vllm_server

    config = EngineConfig(max_model_len=4096, kvcache_gb=0.5)
    server = launch_vllm_server(str(default_model_path), served_model_name="smol", config=config)
    yield server
    server.stop()


@pytest.mark.slow
@pytest.mark.engine
def test_vf_eval_end_to_end(openai_server, default_model_path, tmp_path):
    command = [VF_EVAL, "rlm-env", "-m", "smol", "-n", "2", "-r", "1", "--no-push", "--no-rich"]
    command += ["--client.base-url", openai_server.base_url, "--client.api-key-var", "RLM_TEST_KEY"]
    command += ["--env.agent.runtime.type", "subprocess", "-o", str(tmp_path), "--run.name", "e2e"]
    command += [
        "--env.taskset.lengths",
        "2k",
        "--env.taskset.count",
        "2",
        "--env.agent.harness.id",
        "rlm-env",
    ]
    command += ["--env.agent.harness.episode.budget.max-root-turns", "2"]
    command += ["--env.agent.harness.episode.root-sampling.max-tokens", "48"]
    command += ["--env.agent.harness.episode.sub-sampling.max-tokens", "16"]
    env = {**os.environ, "RLM_TEST_KEY": "sk-local", "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run(command, capture_output=True, text=True, timeout=500, env=env, cwd=str(tmp_path))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    rollouts = [json.loads(line) for line in (tmp_path / "e2e" / "traces.jsonl").read_text().splitlines()]
    assert len(rollouts) == 2
    assert {r["traces"][0]["task"]["data"]["id"] for r in rollouts} == {
        "niah-test-2000-s0",
        "niah-test-2000-s1",
    }
    for rollout in rollouts:
        trace = rollout["traces"][0]
        assert trace["ok"] and not trace["errors"], trace["errors"]
        # Rewards from rewards/ (correctness weighs 1; format and cost are logged at weight 0).
        assert set(trace["rewards"]) >= {"correctness", "format", "cost"}
        assert (
            trace["rewards"]["correctness"]["weight"] == 1.0
            and 0.0 <= trace["rewards"]["correctness"]["score"] <= 1
        )
        assert {"answered", "root_turns", "cells"} <= set(trace["metrics"])
        # The context travelled by reference: the task data names it, the trace never holds it.
        data = trace["task"]["data"]
        assert (data["family"], data["length"]) == ("niah", 2000) and "context" not in data
        # Every root call went through the endpoint (the trace's calls) and came back with the
        # engine's token ids; the token view chains them with a loss mask on the sampled ids.
        record = trace["info"]["rlm_record"]
        roots = [c for c in record["calls"] if c["role"] == "root"]
        through_endpoint = [
            c for c in record["calls"] if c["role"] in ("root", "sub")
        ]  # sub_model="endpoint"
        assert (
            len(trace["calls"]) == len(through_endpoint) and len(roots) == record["budget"]["root_turns"] >= 1
        )
        assert sum(1 for n in trace["nodes"] if n.get("sampled")) >= len(roots)
        assert sum(c["usage"]["completion_tokens"] for c in trace["calls"]) == sum(
            c["num_completion_tokens"] for c in through_endpoint
        )
        tokens = trace["info"]["rlm_tokens"]
        ids, mask, logprobs = tokens["token_ids"], tokens["loss_mask"], tokens["logprobs"]
        assert len(ids) == len(mask) == len(logprobs) and set(mask) == {0, 1}
        sampled = sum(len(c["completion_token_ids"]) for c in roots)
        assert ids[-len(roots[-1]["completion_token_ids"]) :] == roots[-1]["completion_token_ids"]
        if tokens["consistent"]:  # one append-only sequence: every sampled id is in it, masked 1
            assert (
                sum(mask) == sampled
                and ids[: len(roots[0]["prompt_token_ids"])] == roots[0]["prompt_token_ids"]
            )
        else:  # the server re-rendered a reply differently (drift): the view restarted there
            assert len(roots) > 1 and sum(mask) < sampled
        for call in roots:
            assert len(call["logprobs"]) == len(call["completion_token_ids"]) and all(
                x <= 0 for x in call["logprobs"]
            )
        assert record["sandbox_mode"] == "bwrap" and record["flags"]["infra_failure"] is False

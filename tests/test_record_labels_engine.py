"""Record labels on the real vLLM engine (the session's shared two-replica `vllm_client`).

What the engine itself decides, checked end to end: an over-long sub-call prompt is refused as
the model's mistake (by our token check before sending, and by vLLM's own validation when a
caller bypasses it), and every completion names the checkpoint that sampled it, including a
reload that happens while a request is in flight. Nothing here depends on what the model says.
"""

from __future__ import annotations

import asyncio

import pytest

from rewards import Rubric
from rlm_env.episode import Episode
from rlm_env.episode.config import config_from_dict
from rlm_env.models import SamplingParams
from rlm_env.models.base import PromptTooLong
from rlm_env.models.checkpoint import weights_identity
from rlm_env.models.scripted import ScriptedPolicy
from rlm_env.tasks.base import Task
from tests.fakes import repl

pytestmark = [pytest.mark.engine, pytest.mark.slow]

SHORT = SamplingParams(max_tokens=4, temperature=0.0)
# Digits tokenize one a token: 15,400 characters stay under the character limit sized from the
# 4,096-token test engine (16,384) while being far more tokens than its window.
DIGITS = "1234567890\n" * 1400


async def test_over_long_sub_call_prompt_on_the_real_engine_is_the_models_mistake(vllm_client):
    task = Task(id="long-sub", context=DIGITS, question="Sum the digits.", expected_answer="0")
    code = (
        "ok = llm_query('Say hi.', max_tokens=4)\n"
        "try:\n    llm_query(context)\nexcept SubCallError as e:\n    print('refused:', e)"
    )
    policy = ScriptedPolicy([repl(code), repl("FINAL('none')")])
    cfg = config_from_dict({"sub_sampling": {"max_tokens": 8, "temperature": 0.0}})
    record = await Episode(task, cfg, policy, vllm_client, rubric=Rubric()).run()
    observation = policy.seen[1][-1]["content"]
    assert "refused:" in observation and "sub-model's window is 4,096 tokens" in observation
    assert not record.flags.infra_failure and record.training_exclusion() is None
    (sub,) = [c for c in record.calls if c.role == "sub"]  # only the short call reached the engine
    assert sub.checkpoint is not None and sub.checkpoint == vllm_client.checkpoint
    assert sub.prompt_token_ids and sub.completion_token_ids and sub.logprobs


async def test_the_engines_own_refusal_is_prompt_too_long_not_infrastructure(vllm_client):
    too_long = [11] * 5000
    with pytest.raises(PromptTooLong) as info:
        await vllm_client.generate([], SHORT, prompt_token_ids=too_long)
    assert info.value.infra is False and "maximum context length is 4096" in str(info.value)


async def test_every_completion_names_its_checkpoint_across_reloads(vllm_client, default_model_path):
    base = weights_identity(default_model_path)
    first = await vllm_client.generate([{"role": "user", "content": "Hi"}], SHORT)
    assert first.checkpoint in (base, vllm_client.checkpoint) and not first.checkpoint_changed

    await vllm_client.reload_weights(str(default_model_path), checkpoint="test/step-1")
    named = await vllm_client.generate([{"role": "user", "content": "Hi"}], SHORT)
    assert named.checkpoint == vllm_client.checkpoint == "test/step-1"

    # A request that meets a reload in flight cannot name one checkpoint: it says so.
    reload = asyncio.create_task(
        vllm_client.reload_weights(str(default_model_path), checkpoint="test/step-2")
    )
    await asyncio.sleep(0.05)
    overlapped = await vllm_client.generate([{"role": "user", "content": "Count to ten."}], SHORT)
    await reload
    assert overlapped.checkpoint_changed and overlapped.checkpoint is None
    after = await vllm_client.generate([{"role": "user", "content": "Hi"}], SHORT)
    assert after.checkpoint == "test/step-2" and not after.checkpoint_changed

    # Put the base name back for later users of the shared client (same weights all along).
    await vllm_client.reload_weights(str(default_model_path), checkpoint=base)

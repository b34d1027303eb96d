"""The root transcript in token ids: the training sample is exactly the sampled ids plus the
template/observation ids between them, and the loss mask covers only what was sampled."""

from __future__ import annotations

import pytest

from rewards import Rubric
from rlm_env.episode import Episode
from rlm_env.episode.config import config_from_dict
from rlm_env.tasks.base import Task
from tests.fakes import TokenizerBackedPolicy, UpperCaseSubModel, repl
from training import samples_from_records


@pytest.fixture(scope="module")
def tokenizer(default_model_path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(default_model_path)


async def test_root_sample_is_append_only_and_masked(tokenizer):
    replies = [repl("x = len(context)\nprint(x)"), "no code, just thinking", repl("FINAL(x)")]
    policy = TokenizerBackedPolicy(tokenizer, replies)
    task = Task(id="tito", context="abc" * 100, question="How long is it?")
    episode = Episode(task, config_from_dict({}), policy, UpperCaseSubModel())
    record = await episode.run()
    assert record.answer.content == 300
    sample = record.root_sample
    assert sample.available and sample.consistent
    assert len(sample.token_ids) == len(sample.loss_mask) == len(sample.logprobs)

    # Every prompt the engine saw is a prefix of the final sample (append-only transcript).
    for prompt in policy.prompts:
        assert sample.token_ids[: len(prompt)] == prompt
    # The masked-in tokens are exactly the sampled replies (each ending in the end token).
    sampled = [t for t, m in zip(sample.token_ids, sample.loss_mask, strict=True) if m == 1]
    expected = []
    for text in replies:
        expected += tokenizer.encode(text, add_special_tokens=False) + [tokenizer.eos_token_id]
    assert sampled == expected
    assert all(lp == -0.5 for lp, m in zip(sample.logprobs, sample.loss_mask, strict=True) if m == 1)
    # The last prompt, built turn by turn from ids, decodes to the chat template's rendering.
    last_prompt = tokenizer.decode(policy.prompts[-1])
    rendered = tokenizer.apply_chat_template(
        record.root_messages[: record.calls[-1].num_messages], tokenize=False, add_generation_prompt=True
    )
    assert last_prompt == rendered

    # Unscored, it is not trainable; scored, it becomes one sample, exactly as sampled.
    assert samples_from_records([record]) == ([], {"unscored": 1})
    await Rubric().score(record, task)
    samples, dropped = samples_from_records([record])
    assert len(samples) == 1 and dropped == {}
    assert samples[0].token_ids == sample.token_ids and samples[0].has_logprobs
    # Root prompts are stored once: each call points into the sample instead of repeating it.
    for call, prompt in zip(record.calls, policy.prompts, strict=True):
        assert call.prompt_token_ids is None and call.prompt_in_sample
        assert record.call_prompt_ids(call) == prompt

"""Root-history compaction on the real sandbox with a scripted root (real tokenizer ids).

A small context window forces several compactions; the REPL's variables must survive them, the
record must list them, each segment's sample must mask exactly what was sampled in it and hold
every prompt of that segment as a prefix, and training must get one sample per segment with the
episode's advantage.
"""

from __future__ import annotations

import pytest

from rewards import Rubric
from rlm_env.episode import Episode
from rlm_env.episode.compaction import SUMMARY_HEADER
from rlm_env.episode.config import DEFAULT_COMPACTION_PROMPT, config_from_dict, load_config
from rlm_env.episode.record import EpisodeRecord, check_record
from rlm_env.models.base import Completion
from rlm_env.tasks.base import Task
from tests.fakes import TokenizerBackedPolicy, UpperCaseSubModel, repl
from training import samples_from_records
from training.data import grpo_items

TURNS = 8
FILLER = "print(' '.join(str(j) for j in range(50)))"
SUMMARY = "I stored v0, v1, ... in the REPL; keep going."


class SummarisingPolicy(TokenizerBackedPolicy):
    """Replays root replies; answers a compaction request with a fixed summary (its own ids)."""

    def __init__(self, tokenizer, replies):
        super().__init__(tokenizer, replies)
        self.root_prompts: list[list[int]] = []
        self.summary_prompts: list[list[int]] = []

    async def generate(self, messages, sampling, *, prompt_token_ids=None, session_id=None):
        if messages[-1]["content"] == DEFAULT_COMPACTION_PROMPT:
            assert sampling.max_tokens == 64
            self.summary_prompts.append(list(prompt_token_ids))
            ids = self.tokenizer.encode(SUMMARY, add_special_tokens=False) + [self.tokenizer.eos_token_id]
            return Completion(
                text=SUMMARY,
                finish_reason="stop",
                prompt_token_ids=list(prompt_token_ids),
                completion_token_ids=ids,
                logprobs=[-0.25] * len(ids),
                model=self.name,
            )
        self.root_prompts.append(list(prompt_token_ids))
        return await super().generate(messages, sampling, prompt_token_ids=prompt_token_ids)


def compaction_config(**extra):
    return config_from_dict(
        {
            "budget": {"context_window": 1400, "max_root_turns": TURNS + 2},
            "root_sampling": {"max_tokens": 64},
            "compaction": {"enabled": True, "summary_max_tokens": 64, **extra},
        }
    )


@pytest.fixture(scope="module")
def tokenizer(default_model_path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(default_model_path)


def replies() -> list[str]:
    turns = [repl(f"v{i} = {i} * 7\n{FILLER}") for i in range(TURNS)]
    total = " + ".join(f"v{i}" for i in range(TURNS))
    return turns + [repl(f"FINAL({total})")]


async def run_compacting_episode(tokenizer, task_id="compact", **extra):
    policy = SummarisingPolicy(tokenizer, replies())
    task = Task(id=task_id, context="abc" * 100, question="What is the sum?", expected_answer="196")
    episode = Episode(task, compaction_config(**extra), policy, UpperCaseSubModel(), rubric=Rubric())
    return await episode.run(), policy


def sampled_ids(tokenizer, text: str) -> list[int]:
    return tokenizer.encode(text, add_special_tokens=False) + [tokenizer.eos_token_id]


async def test_compactions_keep_the_repl_and_split_the_sample(tokenizer):
    record, policy = await run_compacting_episode(tokenizer)
    # Every variable survived every compaction: the final cell sums all of them.
    assert record.stop_reason == "answer" and record.answer.status == "confirmed"
    assert record.answer.content == sum(i * 7 for i in range(TURNS))
    assert record.rewards["correctness"] == 1.0

    # Several compactions, each recorded with its summary call and a shrinking prompt.
    assert len(record.compactions) >= 2
    summaries = [c for c in record.calls if c.role == "summary"]
    assert [c.summary_call_id for c in record.compactions] == [c.id for c in summaries]
    assert len(policy.summary_prompts) == len(summaries)
    window = record.config["budget"]["context_window"]
    for k, compaction in enumerate(record.compactions, start=1):
        assert compaction.tokens_before >= 0.75 * window > compaction.tokens_after
        assert compaction.kept_turns == 1
        first_call = next(c for c in record.calls if c.role == "root" and c.segment == k)
        assert first_call.id == f"root-{compaction.at_turn}"
        assert compaction.messages[0] == record.root_messages[0]  # the system prompt
        assert SUMMARY_HEADER in compaction.messages[1]["content"]
        assert "What is the sum?" in compaction.messages[1]["content"]  # the question is kept
        assert [m["role"] for m in compaction.messages[2:4]] == ["assistant", "user"]  # kept turn

    # Each segment: append-only, every prompt of the segment a prefix, the mask exactly on what
    # was sampled in that segment (kept replies are prompt there).
    samples = record.root_samples()
    assert len(samples) == len(record.compactions) + 1
    roots = [c for c in record.calls if c.role == "root"]
    assert len(roots) == len(policy.root_prompts) == TURNS + 1
    for k, sample in enumerate(samples):
        assert sample.available and sample.consistent
        assert len(sample.token_ids) == len(sample.loss_mask) == len(sample.logprobs)
        calls = [c for c in roots if c.segment == k]
        assert calls, f"segment {k} has no root call"
        for call in calls:
            prompt = policy.root_prompts[roots.index(call)]
            assert call.prompt_in_sample and record.call_prompt_ids(call) == prompt
            assert sample.token_ids[: len(prompt)] == prompt
        masked = [t for t, m in zip(sample.token_ids, sample.loss_mask, strict=True) if m == 1]
        assert masked == [t for c in calls for t in c.completion_token_ids]
        assert masked == [t for c in calls for t in sampled_ids(tokenizer, c.completion_text)]
        assert all(lp == -0.5 for lp, m in zip(sample.logprobs, sample.loss_mask, strict=True) if m)
        assert sample.token_ids[: len(prompt)] == prompt
        # The segment's last prompt is the chat template over its messages.
        last = calls[-1]
        rendered = tokenizer.apply_chat_template(
            record.segment_messages(k)[: last.num_messages], tokenize=False, add_generation_prompt=True
        )
        assert tokenizer.decode(record.call_prompt_ids(last)) == rendered
    # The summary's tokens are root-engine spend: counted in the root tokens, not in root turns.
    assert record.budget["root_turns"] == TURNS + 1
    summary_tokens = sum(c.num_completion_tokens for c in summaries)
    assert record.budget["root_completion_tokens"] == summary_tokens + sum(
        c.num_completion_tokens for c in roots
    )

    # The record round-trips through JSON under the current schema.
    again = check_record(EpisodeRecord.model_validate_json(record.to_json()).model_dump(mode="json"))
    assert [c.model_dump() for c in again.compactions] == [c.model_dump() for c in record.compactions]


async def test_training_gets_one_sample_per_segment_with_the_episode_advantage(tokenizer):
    compacted, _ = await run_compacting_episode(tokenizer, task_id="group")
    # A second member of the group, without compaction, which fails: the group has variance.
    plain, _ = await run_compacting_episode(tokenizer, task_id="group", enabled=False)
    assert plain.compactions == [] and plain.stop_reason == "context_window"
    assert len(plain.root_samples()) == 1
    samples, dropped = samples_from_records([compacted, plain])
    assert dropped == {}
    by_episode: dict[str, list] = {}
    for s in samples:
        by_episode.setdefault(s.episode_id, []).append(s)
    mine = by_episode[compacted.episode_id]
    assert [s.token_ids for s in mine] == [x.token_ids for x in compacted.root_samples()]
    assert [s.segment for s in mine] == list(range(len(compacted.compactions) + 1))
    # The advantage is the episode's (group mean over episodes, not over segments).
    mean = (compacted.rewards["reward"] + plain.rewards["reward"]) / 2
    assert all(s.advantage == pytest.approx(compacted.rewards["reward"] - mean) for s in mine)
    assert by_episode[plain.episode_id][0].advantage == pytest.approx(plain.rewards["reward"] - mean)

    items, stats = grpo_items([compacted, plain])
    compacted_items = [i for i in items if i.episode_id.startswith(compacted.episode_id)]
    assert len(compacted_items) == len(compacted.root_samples())
    assert len({i.advantage for i in compacted_items}) == 1 and compacted_items[0].advantage > 0
    assert stats.items == len(items) == len(compacted_items) + 1


async def test_version_2_records_still_read(tokenizer):
    record, _ = await run_compacting_episode(tokenizer, enabled=False)
    data = record.model_dump(mode="json")
    data["schema_version"] = 2
    for key in ("compactions",):
        data.pop(key)
    for call in data["calls"]:
        call.pop("segment")
    old = check_record(data)
    assert old.root_samples() == [record.root_sample]
    assert all(old.call_prompt_ids(c) == record.call_prompt_ids(c) for c in record.calls)
    with pytest.raises(ValueError, match="schema_version"):
        check_record({**data, "schema_version": 1})


def test_config_example_loads():
    config = load_config("configs/compaction.toml")
    assert config.compaction.enabled and config.compaction.keep_last_turns >= 0
    with pytest.raises(ValueError, match="trigger_fraction"):
        config_from_dict({"compaction": {"trigger_fraction": 1.5}})


async def test_adapters_read_every_segment(tokenizer):
    from rlm_env.adapters.trl_rollout import split_root_sample
    from rlm_env.adapters.verifiers_env import token_view

    record, _ = await run_compacting_episode(tokenizer)
    segments = record.root_samples()
    assert len(segments) >= 3
    # verifiers: one token view per segment, each the segment's sample up to its last sampled
    # token (the view is built from the calls), with the same mask; no drift flagged.
    view = token_view(record)
    assert len(view["segments"]) == len(segments)
    for part, sample in zip(view["segments"], segments, strict=True):
        n = len(part["token_ids"])
        assert part["consistent"] and part["loss_mask"][-1] == 1
        assert (part["token_ids"], part["loss_mask"]) == (sample.token_ids[:n], sample.loss_mask[:n])
        assert sum(part["loss_mask"]) == sum(sample.loss_mask)
    assert view["token_ids"] == view["segments"][0]["token_ids"]
    # TRL (one sequence per prompt): the first segment, split at the first prompt.
    prompt, completion, logprobs, mask = split_root_sample(record, tokenizer)
    assert prompt + completion == segments[0].token_ids
    assert mask == segments[0].loss_mask[len(prompt) :] and len(logprobs) == len(completion)


async def test_sub_model_summaries_and_summary_failures(tokenizer):
    task = Task(id="sub-summary", context="abc" * 100, question="What is the sum?", expected_answer="196")
    # summarizer = "sub": the sub-model writes the summary (here: the request upper-cased).
    policy = SummarisingPolicy(tokenizer, replies())
    sub = UpperCaseSubModel()
    record = await Episode(task, compaction_config(summarizer="sub"), policy, sub).run()
    assert record.answer.content == 196 and policy.summary_prompts == []
    summaries = [c for c in record.calls if c.role == "summary"]
    assert len(summaries) == len(record.compactions) == sub.calls >= 2
    assert all(c.model == sub.name for c in summaries)
    assert DEFAULT_COMPACTION_PROMPT.upper() in record.compactions[0].messages[1]["content"]

    # An engine failure of the summary call is the environment's: flagged, stopped, recorded.
    failing = UpperCaseSubModel(fail_on=DEFAULT_COMPACTION_PROMPT[:40])
    policy = SummarisingPolicy(tokenizer, replies())
    record = await Episode(task, compaction_config(summarizer="sub"), policy, failing).run()
    assert record.stop_reason == "model_error" and record.flags.infra_failure
    assert record.training_exclusion() == "infra_failure"
    failed = [c for c in record.calls if c.role == "summary"]
    assert len(failed) == 1 and failed[0].error and failed[0].finish_reason == "error"
    assert record.compactions == [] and len(record.root_samples()) == 1

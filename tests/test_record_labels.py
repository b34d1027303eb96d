"""The labels a trainer trusts, one test per mistake the record used to make.

Each test reproduces a case that was once labelled wrongly (a model mistake recorded as
infrastructure, an excluded episode trained as reward 0, a missing logprob stored as 0.0, ...)
on the real bwrap sandbox with scripted policies and tiny model doubles, and checks the label the
record now carries and what `training_exclusion()` and `samples_from_records` make of it.
"""

from __future__ import annotations

import asyncio
import json
import math

import pytest

from rewards import Rubric
from rlm_env.episode import Episode, EpisodeRecord, TrajectoryWriter, read_records
from rlm_env.episode.config import config_from_dict
from rlm_env.episode.record import CorruptRecordError, Flags, RootSample
from rlm_env.models.base import Completion, PromptTooLong
from rlm_env.models.scripted import ScriptedPolicy
from rlm_env.tasks.base import Task
from tests.fakes import TokenizerBackedPolicy, UpperCaseSubModel, repl
from training.samples import group_advantages, samples_from_records

TASK = Task(
    id="labels", context="The code is 7731.\n" * 20, question="What is the code?", expected_answer="7731"
)


def config(**overrides):
    return config_from_dict({"sandbox": {"cell_timeout_s": 5}}, overrides)


async def run(replies, sub=None, cfg=None, policy=None) -> EpisodeRecord:
    policy = policy or ScriptedPolicy(replies)
    episode = Episode(TASK, cfg or config(), policy, sub or UpperCaseSubModel(), rubric=Rubric())
    return await episode.run()


def caught(observation_source: ScriptedPolicy, turn: int = 1) -> str:
    return observation_source.seen[turn][-1]["content"]


# -- budgets are the model's --------------------------------------------------------------------


async def test_wall_clock_running_out_during_a_root_call_is_the_models_budget():
    """Was: `infra_failure` (the model_error path), so a slow policy escaped its penalty."""
    slow = ScriptedPolicy([repl("x = 1"), "I am still thinking..."], delay_s=2.0)
    record = await run(None, policy=slow, cfg=config(**{"budget.wall_clock_s": 1.0}))
    assert record.stop_reason == "wall_clock"
    assert not record.flags.infra_failure and record.flags.model_failure
    assert record.calls[-1].error and "wall-clock" in record.calls[-1].error
    assert record.rewards["mask"] == 1.0 and record.training_exclusion() is None


async def test_a_real_root_engine_failure_is_still_infrastructure():
    record = await run([])  # the scripted "engine" raises on the first call
    assert record.stop_reason == "model_error" and record.flags.infra_failure
    assert record.training_exclusion() == "infra_failure"


# -- sub-call prompts that do not fit are the model's ---------------------------------------------


class WindowedSubModel(UpperCaseSubModel):
    """A sub-model double with a real tokenizer and a small window, like a vLLM engine."""

    def __init__(self, tokenizer, window: int, engine_refuses: bool = False):
        super().__init__()
        self.tokenizer, self.context_window, self.engine_refuses = tokenizer, window, engine_refuses
        self.max_tokens_seen: list[int] = []

    async def generate(self, messages, sampling, **kw):
        self.max_tokens_seen.append(sampling.max_tokens)
        if self.engine_refuses:
            raise PromptTooLong("The decoder prompt is longer than the maximum model length of 64")
        return await super().generate(messages, sampling, **kw)


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    from rlm_env.models.default_model import ensure_default_model

    return AutoTokenizer.from_pretrained(ensure_default_model())


async def test_sub_call_prompt_longer_than_the_window_is_a_catchable_model_error(tokenizer):
    """Was: vLLM's validation error became ModelError, flagged infra: the commonest RLM mistake
    took the episode out of training."""
    sub = WindowedSubModel(tokenizer, window=512)
    code = "try:\n    llm_query(context * 20)\nexcept SubCallError as e:\n    print('refused:', e)"
    policy = ScriptedPolicy([repl(code), repl("FINAL('gave up')")])
    # A generous character limit, so the exact token check is what refuses it.
    record = await run(None, sub=sub, policy=policy, cfg=config(**{"budget.max_sub_prompt_chars": 100_000}))
    observation = caught(policy)
    assert "refused:" in observation and "tokens but the sub-model's window is 512 tokens" in observation
    assert "too many" in observation and sub.calls == 0  # refused before the engine saw it
    assert not record.flags.infra_failure and record.training_exclusion() is None
    assert record.budget["sub_calls"] == 0


async def test_default_character_limit_is_sized_from_the_sub_engine_window(tokenizer):
    sub = WindowedSubModel(tokenizer, window=100)
    policy = ScriptedPolicy([repl("try:\n    llm_query('x' * 401)\nexcept SubCallError as e:\n    print(e)")])
    policy._replies.append(repl("FINAL(1)"))
    record = await run(None, sub=sub, policy=policy)
    assert "401 characters exceeds the limit of 400" in caught(policy)
    assert not record.flags.infra_failure


async def test_engine_refusing_a_long_prompt_is_the_models_mistake_too(tokenizer):
    sub = WindowedSubModel(tokenizer, window=4096, engine_refuses=True)
    policy = ScriptedPolicy(
        [
            repl("try:\n    llm_query('hi')\nexcept SubCallError as e:\n    print('refused:', e)"),
            repl("FINAL(1)"),
        ]
    )
    record = await run(None, sub=sub, policy=policy)
    assert "does not fit the sub-model's window" in caught(policy)
    assert not record.flags.infra_failure and record.training_exclusion() is None
    assert record.calls[1].error and record.budget["sub_calls_failed"] == 1


# -- sampling options from the sandbox are untrusted ----------------------------------------------


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ("top_p=-1.0", "top_p must be in (0, 1]"),
        ("temperature=float('nan')", "JSON"),  # refused inside the sandbox already
        ("temperature=float('inf')", "JSON"),
        ("temperature=7.0", "temperature must be between 0 and 2.0"),
        ("max_tokens=0", "max_tokens must be positive"),
        ("top_k=3", "unknown sampling option"),
    ],
)
async def test_bad_sampling_options_are_refused_in_the_sandbox_facing_api(options, message):
    code = f"try:\n    llm_query('hi', {options})\nexcept SubCallError as e:\n    print('refused:', e)"
    policy = ScriptedPolicy([repl(code), repl("FINAL(1)")])
    record = await run(None, policy=policy)
    assert message in caught(policy)
    assert not record.flags.infra_failure and record.budget["sub_calls"] == 0


async def test_max_tokens_is_capped_by_the_budget_and_the_window(tokenizer):
    sub = WindowedSubModel(tokenizer, window=300)
    cfg = config(**{"sub_sampling.max_tokens": 64})
    record = await run([repl("r = llm_query('hi', max_tokens=10**9)\nFINAL(r)")], sub=sub, cfg=cfg)
    assert record.answer.content == "HI"
    assert sub.max_tokens_seen == [64]  # the configured ceiling, not a billion
    sub = WindowedSubModel(tokenizer, window=300)
    cfg = config(**{"sub_sampling.max_tokens": 10_000})
    await run([repl("FINAL(llm_query('hi', max_tokens=5000))")], sub=sub, cfg=cfg)
    assert 250 < sub.max_tokens_seen[0] < 300  # the room left in the window after the prompt


# -- the record: ids, logprobs, size ------------------------------------------------------------


async def test_missing_logprobs_are_absent_not_zero(tokenizer):
    """Was: stored as 0.0 (probability 1), the same value as padding."""

    class NoLogprobs(TokenizerBackedPolicy):
        async def generate(self, *a, **k):
            c = await super().generate(*a, **k)
            c.logprobs = None
            return c

    policy = NoLogprobs(tokenizer, [repl("FINAL(7731)")])
    record = await run(None, policy=policy)
    sample = record.root_sample
    assert any(sample.loss_mask) and all(lp is None for lp in sample.logprobs)
    (trainable,), _ = samples_from_records([record])
    assert not trainable.has_logprobs
    with_lp = await run(None, policy=TokenizerBackedPolicy(tokenizer, [repl("FINAL(7731)")]))
    assert samples_from_records([with_lp])[0][0].has_logprobs
    masked = [
        lp for lp, m in zip(with_lp.root_sample.logprobs, with_lp.root_sample.loss_mask, strict=True) if m
    ]
    assert masked and all(lp == -0.5 for lp in masked)
    assert all(
        lp is None
        for lp, m in zip(with_lp.root_sample.logprobs, with_lp.root_sample.loss_mask, strict=True)
        if not m
    )


async def test_sub_call_ids_are_recorded_whatever_the_policy(tokenizer):
    class IdSub(UpperCaseSubModel):
        async def generate(self, messages, sampling, **kw):
            c = await super().generate(messages, sampling, **kw)
            return Completion(
                text=c.text,
                finish_reason="stop",
                prompt_token_ids=[1, 2],
                completion_token_ids=[3],
                logprobs=[-0.1],
            )

    record = await run(
        [repl("FINAL(llm_query('hi'))")], sub=IdSub(), cfg=config(sub_call_policy="live_untrained")
    )
    (sub,) = [c for c in record.calls if c.role == "sub"]
    assert sub.prompt_token_ids == [1, 2] and sub.completion_token_ids == [3] and sub.logprobs == [-0.1]


async def test_call_ids_are_unique_across_the_episode_tree():
    """Was: child episodes reused their parent's ids (root-0, sub-1)."""

    def root_or_child(messages):
        if "Read it with code" in messages[1]["content"]:
            return repl("FINAL(llm_query('child asks'))")
        return repl("a = llm_query('parent asks')\nb = rlm_query('hello child')\nFINAL(a + b)")

    record = await run([root_or_child, root_or_child], cfg=config(**{"budget.max_depth": 2}))
    ids = [c.id for c in record.calls] + [c.id for child in record.children for c in child.calls]
    assert len(ids) == len(set(ids)) == 4
    child_ids = {c.id for c in record.children[0].calls}
    assert child_ids == {"child-1/root-0", "child-1/sub-1"}
    assert all(c.parent_id == "root-0" for c in record.children[0].calls if c.role == "child")


async def test_record_grows_linearly_with_turns(tokenizer):
    """Was: every root call repeated the whole prompt (1.1k, 5.3k, 16.1k ids at 2, 6, 12 turns)."""

    async def stored_ids(turns: int) -> tuple[int, int]:
        replies = [repl(f"x{i} = {i}\nprint(x{i})") for i in range(turns - 1)] + [repl("FINAL(1)")]
        record = await run(None, policy=TokenizerBackedPolicy(tokenizer, replies))
        data = json.loads(record.to_json())
        in_calls = sum(len(c["prompt_token_ids"] or []) for c in data["calls"])
        return in_calls, len(data["root_sample"]["token_ids"])

    sizes = {}
    for turns in (2, 6, 12):
        in_calls, sizes[turns] = await stored_ids(turns)
        assert in_calls == 0, f"{turns} turns: root prompts repeated in calls"
    # One transcript: equal steps per turn (a repeated prompt would make the steps grow).
    per_turn_early = (sizes[6] - sizes[2]) / 4
    per_turn_late = (sizes[12] - sizes[6]) / 6
    assert per_turn_late == pytest.approx(per_turn_early, rel=0.2)


# -- one exclusion rule, honest files -----------------------------------------------------------


def make_record(reward=None, mask=1.0, infra=False, episode_id="e", task_id="t", available=True):
    rewards = {} if reward is None else {"reward": reward, "mask": mask}
    sample = RootSample(
        token_ids=[5, 6, 7], loss_mask=[0, 1, 1], logprobs=[None, -0.2, -0.3], available=available
    )
    return EpisodeRecord(
        episode_id=episode_id,
        task={"id": task_id},
        config={},
        rewards=rewards,
        flags=Flags(infra_failure=infra),
        root_sample=sample,
    )


@pytest.mark.parametrize(
    ("record", "reason"),
    [
        (make_record(reward=1.0), None),
        (make_record(reward=0.0), None),
        (make_record(reward=1.0, infra=True), "infra_failure"),
        (make_record(), "unscored"),
        (make_record(reward=float("nan")), "non_finite_reward"),
        (make_record(reward=0.0, mask=0.0), "reward_mask"),
    ],
)
def test_training_exclusion_is_one_rule(record, reason):
    assert record.training_exclusion() == reason


def test_samples_leave_excluded_episodes_out_of_the_group_mean():
    """Was: a judge failure (mask 0, no flag) was trained as reward 0.0 and pulled the mean."""
    records = [
        make_record(reward=1.0, episode_id="a"),
        make_record(reward=0.0, episode_id="b"),
        make_record(reward=0.0, mask=0.0, episode_id="judge-failed"),
        make_record(episode_id="unscored"),
        make_record(reward=1.0, infra=True, episode_id="infra"),
        make_record(reward=1.0, available=False, episode_id="no-ids"),
        make_record(reward=float("nan"), episode_id="nan"),
    ]
    samples, dropped = samples_from_records(records)
    assert {s.episode_id: s.advantage for s in samples} == {"a": 0.5, "b": -0.5}
    assert dropped == {
        "reward_mask": 1,
        "unscored": 1,
        "infra_failure": 1,
        "no_token_ids": 1,
        "non_finite_reward": 1,
    }
    inconsistent = make_record(reward=1.0)
    inconsistent.root_sample.consistent = False
    assert samples_from_records([inconsistent]) == ([], {"inconsistent_ids": 1})


@pytest.mark.parametrize(
    ("rewards", "advantages"),
    [
        ([], []),
        ([1.0], [0.0]),
        ([1.0, 0.0], [0.5, -0.5]),
        ([1.0, 1.0, 1.0], [0.0, 0.0, 0.0]),
        ([3.0, 0.0, 0.0], [2.0, -1.0, -1.0]),
    ],
)
def test_group_advantages_are_reward_minus_group_mean(rewards, advantages):
    assert group_advantages(rewards) == pytest.approx(advantages)


def test_nan_reward_round_trips_and_is_excluded(tmp_path):
    """Was: written as null, and the file could then not be read back."""
    path = tmp_path / "r.jsonl"
    with TrajectoryWriter(path) as w:
        w.write(make_record(reward=float("nan")))
    (back,) = read_records(path)
    assert math.isnan(back.rewards["reward"]) and back.training_exclusion() == "non_finite_reward"


def test_a_corrupt_line_in_the_middle_is_an_error_not_silently_dropped(tmp_path):
    path = tmp_path / "r.jsonl"
    with TrajectoryWriter(path) as w:
        w.write(make_record(reward=1.0, episode_id="one"))
    with open(path, "a") as f:
        f.write('{"schema_version": 2, "episode_id": "dam\n')  # damaged, but newline-terminated
    with TrajectoryWriter(path) as w:
        w.write(make_record(reward=1.0, episode_id="three"))
    with pytest.raises(CorruptRecordError, match="line 2"):
        read_records(path)


def test_only_a_torn_last_line_is_skipped(tmp_path):
    path = tmp_path / "r.jsonl"
    with TrajectoryWriter(path) as w:
        w.write(make_record(reward=1.0, episode_id="one"))
    with open(path, "a") as f:
        f.write('{"schema_version": 2, "episode_id": "to')  # crash mid-write: no newline
    assert [r.episode_id for r in read_records(path)] == ["one"]


def test_an_old_schema_is_refused_clearly(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text(json.dumps({"schema_version": 1, "episode_id": "x", "task": {}, "config": {}}) + "\n")
    with pytest.raises(ValueError, match="schema_version 1 is not supported"):
        read_records(path)


async def test_concurrent_episodes_keep_their_labels_apart():
    """A slow episode running out of time next to a fast one: labels never leak across."""
    slow = ScriptedPolicy([repl("x = 1"), "..."], delay_s=1.5)
    fast = ScriptedPolicy([repl("FINAL(7731)")])
    cfg = config(**{"budget.wall_clock_s": 1.0})
    a, b = await asyncio.gather(run(None, policy=slow, cfg=cfg), run(None, policy=fast, cfg=cfg))
    assert a.stop_reason == "wall_clock" and b.stop_reason == "answer"
    assert b.rewards["reward"] == 1.0 and a.rewards["reward"] == 0.0
    assert a.training_exclusion() is None and b.training_exclusion() is None

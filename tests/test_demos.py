"""Scripted demonstrations: the niah, multihop and oolong experts through the real episode loop and the real sandbox.

They check what a trainer relies on: the expert answers correctly from the REPL's output (never
from the task's answer), every strategy and the recovery path run, the records carry a root
sample whose loss mask covers exactly the expert's reply ids (+ the end token), and every record
says it is a demonstration."""

from __future__ import annotations

import asyncio
import json
import re

import pytest

from rewards import Rubric, RubricConfig
from rlm_env.episode import Episode, EpisodeConfig
from rlm_env.evaluate import episode_id_for
from rlm_env.models import EchoModel
from rlm_env.tasks import multihop, niah, oolong
from rlm_env.tasks.base import Task
from training.demos import multihop as multihop_expert
from training.demos import niah as niah_expert
from training.demos import oolong as oolong_expert
from training.demos.policy import ExpertPolicy, question_from_prompt
from training.demos.run import DATA_SOURCE, demo_summary, expert_policy, label_tasks
from training.samples import samples_from_records


@pytest.fixture(scope="module")
def tokenizer(default_model_path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(default_model_path))


async def _run(tasks: list[Task], policy: ExpertPolicy) -> list:
    async def one(task):
        episode = Episode(
            task,
            EpisodeConfig(),
            policy,
            EchoModel(),
            episode_id=episode_id_for(task),
            rubric=Rubric(RubricConfig()),
        )
        try:
            return await episode.run()
        finally:
            await episode.close()

    return await asyncio.gather(*(one(t) for t in tasks))


def _demos(tasks, tokenizer, strategy=None, family="niah"):
    chosen = label_tasks(family, tasks, strategy)
    return asyncio.run(_run(tasks, expert_policy(family, chosen, tokenizer)))


@pytest.mark.parametrize("strategy", niah_expert.STRATEGIES)
def test_each_strategy_answers_every_needle_kind(strategy, tokenizer):
    tasks = [niah.generate(s, 3000, "train", needle_kind=k) for s, k in enumerate(niah.NEEDLE_KINDS)]
    records = _demos(tasks, tokenizer, strategy)
    for task, r in zip(tasks, records, strict=True):
        assert r.rewards["correctness"] == 1.0, (strategy, r.answer, task.expected_answer)
        assert r.answer.status == "confirmed" and not r.flags.infra_failure
        assert {c.model for c in r.calls} == {f"scripted-expert/{strategy}"}
        assert r.task["metadata"]["data_source"] == DATA_SOURCE
        # every reply runs: no cell raised
        assert not [c for c in r.cells if c.error], [c.error for c in r.cells]


def test_records_carry_the_sample_a_trainer_reads(tokenizer):
    tasks = [niah.generate(s, 3000, "train") for s in range(6)]
    records = _demos(tasks, tokenizer)
    samples, dropped = samples_from_records(records)
    assert dropped == {} and len(samples) == len(records)
    for r, sample in zip(records, samples, strict=True):
        root = r.root_sample
        assert root.available and root.consistent
        sampled = [tid for tid, m in zip(root.token_ids, root.loss_mask, strict=True) if m]
        expected = [
            tid
            for c in r.calls
            for tid in tokenizer.encode(c.completion_text, add_special_tokens=False)
            + [tokenizer.eos_token_id]
        ]
        assert sampled == expected  # the mask covers exactly the expert's replies and their end tokens
        assert all(lp is None for lp in root.logprobs) and not sample.has_logprobs
        assert all(len(c.completion_token_ids) <= 512 for c in r.calls)  # sampleable under the config
        assert sample.reward == 1.0
    summary = demo_summary(records)
    assert summary["accuracy"] == 1.0 and summary["trainable_samples"] == 6
    assert sum(v["episodes"] for v in summary["by_strategy"].values()) == 6


def test_the_expert_reads_only_the_prompt(tokenizer):
    """Same question, different hidden answer: the replies cannot differ before the REPL output."""
    task = niah.generate(3, 3000, "train")
    strategy, script = niah_expert.script("ep", task.question)
    strategy2, script2 = niah_expert.script("ep", task.question)
    assert strategy == strategy2 and next(script) == next(script2)  # deterministic per episode id
    assert task.expected_answer not in next(niah_expert.script("ep", task.question)[1])
    messages = [
        {"role": "system", "content": "s"},
        {
            "role": "user",
            "content": f"x\n\nQuestion: {task.question}\n\nReply with a ```repl block of Python code.",
        },
    ]
    assert question_from_prompt(messages) == task.question


def _with_needle(task: Task, old: str, new: str) -> Task:
    assert old in task.context
    return Task(
        f"{task.id}-{new}",
        task.context.replace(old, new),
        task.question,
        task.expected_answer,
        "exact",
        dict(task.metadata),
    )


@pytest.mark.parametrize("strategy", ["regex-window", "find-loop", "paragraphs"])
def test_an_empty_search_is_broadened(strategy, tokenizer):
    """The needle writes the key as "Placid Newt": the exact search finds nothing, the expert
    broadens (ignore case, any separator) and still answers; without the key at all it says so."""
    task = niah.generate(5, 3000, "train", n_distractors=0)
    key = task.metadata["needle_key"]
    spaced = _with_needle(task, key, key.replace("-", " ").title())
    gone = _with_needle(task, key, "someone")
    records = _demos([spaced, gone], tokenizer, strategy)
    found, missing = records
    outputs = " ".join(c.output or "" for c in found.cells)
    assert re.search(r"loose hits: [1-9]", outputs)
    assert found.rewards["correctness"] == 1.0 and found.answer.status == "confirmed"
    assert missing.answer.content == "not found" and missing.rewards["correctness"] == 0.0
    assert not missing.flags.infra_failure and len(missing.calls) >= 3


def test_cli_writes_demonstrations_and_a_summary(tmp_path):
    from rlm_env.cli import main

    out = tmp_path / "demos"
    assert main(["demos", "--task", "niah", "--lengths", "2k", "--episodes", "5", "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["data_source"] == DATA_SOURCE and summary["episodes"] == 5
    assert summary["accuracy"] == 1.0 and summary["trainable_samples"] == 5
    assert summary["config"]["split"] == "train"
    lines = (out / "trajectories.jsonl").read_text().splitlines()
    assert len(lines) == 5
    assert all(json.loads(x)["task"]["metadata"]["demo_policy"].startswith("scripted-expert/") for x in lines)
    # resumable: a second run adds nothing
    assert main(["demos", "--task", "niah", "--lengths", "2k", "--episodes", "5", "--out", str(out)]) == 0
    assert len((out / "trajectories.jsonl").read_text().splitlines()) == 5


def test_unknown_family_or_strategy_is_refused():
    with pytest.raises(SystemExit, match="no expert"):
        expert_policy("codeqa", {}, tokenizer=object())
    with pytest.raises(SystemExit, match="unknown niah strategy"):
        label_tasks("niah", [niah.generate(0, 500, "train")], "guess")


@pytest.mark.parametrize("strategy", multihop_expert.STRATEGIES)
def test_multihop_expert_follows_every_hop(strategy, tokenizer):
    tasks = [multihop.generate(s, 6000, "train", hops=h) for s, h in ((0, 2), (1, 3), (2, 4))]
    records = _demos(tasks, tokenizer, strategy, family="multihop")
    for task, r in zip(tasks, records, strict=True):
        assert r.rewards["correctness"] == 1.0, (strategy, r.answer, task.expected_answer)
        assert not [c for c in r.cells if c.error], [c.error for c in r.cells]
        assert {c.model for c in r.calls} == {f"scripted-expert/{strategy}"}
        printed = " ".join(c.output for c in r.cells)
        for entity in task.metadata["chain"][1:]:  # every hop's entity was found and shown
            assert entity in printed
    assert samples_from_records(records)[1] == {}


@pytest.mark.parametrize("split", ["train", "test"])
def test_multihop_questions_parse_into_their_chain(split):
    for seed in range(40):
        t = multihop.generate(seed, 1500, split, n_docs=12)
        assert multihop_expert.parse_question(t.question) == (t.metadata["relations"], t.metadata["start"])


def test_a_reply_longer_than_max_tokens_is_never_cut_into_training(tokenizer):
    """An expert reply the config could not have sampled fails the episode as the environment's
    (excluded from training), instead of being truncated into a misleading sample."""
    from rlm_env.episode.config import config_from_dict

    task = niah.generate(0, 2000, "train")
    chosen = label_tasks("niah", [task])
    episode = Episode(
        task,
        config_from_dict({"root_sampling": {"max_tokens": 20}}),
        expert_policy("niah", chosen, tokenizer),
        EchoModel(),
        episode_id=episode_id_for(task),
        rubric=Rubric(RubricConfig()),
    )

    async def go():
        try:
            return await episode.run()
        finally:
            await episode.close()

    record = asyncio.run(go())
    assert record.flags.infra_failure and "DemoTooLong" in (record.calls[-1].error or "")
    assert record.training_exclusion() == "infra_failure"


def test_fixed_style_uses_the_same_names_in_every_episode():
    from training.demos import niah

    questions = ["What is the magic number of humble-tulip?", "Report the watchword of ragged-zeppelin."]
    first_cells = []
    for i, question in enumerate(questions):
        strategy, script = niah.script(f"episode-{i}", question, "regex-window", style="fixed")
        reply = next(script)
        assert strategy == "regex-window"
        first_cells.append(reply.split("```repl", 1)[1])
    for cell in first_cells:
        assert "\nkey = re.search(" in cell and "\nhits = [m.start()" in cell
    varied = [next(niah.script(f"episode-{i}", questions[0], "regex-window")[1]) for i in range(8)]
    assert len({v.split("```repl", 1)[1].split("\n")[4] for v in varied}) > 1  # names differ when varied


@pytest.mark.parametrize("split", ["train", "test"])
def test_any_value_pattern_finds_the_answer_in_the_keys_line(split):
    """The fixed style's one regex for every value shape: its first match in the line that names
    the key is the answer, for every needle kind and template (24 tasks a split)."""

    def line_at(text, pos):
        start = text.rfind("\n", 0, pos) + 1
        end = text.find("\n", pos)
        return text[start : end if end != -1 else len(text)]

    kinds = set()
    for seed in range(24):
        task = niah.generate(seed=seed, length_tokens=3000, split=split)
        key = re.search(r"\b[a-z]+-[a-z]+\b", task.question).group(0)
        pattern = r"(?<![\w-])" + re.escape(key) + r"(?![\w-])"
        lines = [line_at(task.context, m.start()) for m in re.finditer(pattern, task.context)]
        values = [m.group(1) for line in lines for m in [re.search(niah_expert.ANY_VALUE_PATTERN, line)] if m]
        assert values and values[0] == task.expected_answer, (task.question, lines)
        kinds.add(niah_expert._kind(task.question))
    assert kinds == {"number", "code", "phrase"}
    fixed = [
        niah_expert.script(f"e{i}", q, "regex-window", style="fixed")[1]
        for i, q in enumerate(
            ["What is the magic number of humble-tulip?", "Which passcode unlocks humble-tulip?"]
        )
    ]
    for script in fixed:
        next(script)
        extraction = script.send("key: humble-tulip | hits: 1")
        assert repr(niah_expert.ANY_VALUE_PATTERN) in extraction


def _demos_under(tasks, tokenizer, strategy, family, max_tokens):
    """Like `_demos`, under a root `max_tokens` (the training recipe's episodes use 400)."""
    from rlm_env.episode.config import config_from_dict

    chosen = label_tasks(family, tasks, strategy)
    policy = expert_policy(family, chosen, tokenizer)
    config = config_from_dict({"root_sampling": {"max_tokens": max_tokens}})

    async def one(task):
        episode = Episode(
            task, config, policy, EchoModel(), episode_id=episode_id_for(task), rubric=Rubric(RubricConfig())
        )
        try:
            return await episode.run()
        finally:
            await episode.close()

    async def go():
        return await asyncio.gather(*(one(t) for t in tasks))

    return asyncio.run(go())


@pytest.mark.parametrize("strategy", oolong_expert.STRATEGIES)
def test_oolong_expert_labels_with_code_and_answers_every_query(strategy, tokenizer):
    """Every query type, through the real loop and sandbox, with replies that fit the recipe's
    400-token root limit; records are trainable with the loss mask on the expert's ids."""
    tasks = [oolong.generate(s, 4000, "train", query=q) for s, q in enumerate(oolong.QUERIES)]
    records = _demos_under(tasks, tokenizer, strategy, "oolong", max_tokens=400)
    for r in records:
        assert r.answer.status == "confirmed" and not r.flags.infra_failure, r.answer
        assert not [c for c in r.cells if c.error], [c.error for c in r.cells]
        assert {c.model for c in r.calls} == {f"scripted-expert/{strategy}"}
        assert len(r.calls) <= 5 and all(len(c.completion_token_ids) <= 400 for c in r.calls)
        assert "instances;" in " ".join(c.output for c in r.cells)  # the label counts were printed
    # Measured on 2026-12-03: 1.00 on train at 8k and 32k (20 episodes each); the rules are a
    # reader's, so the floor leaves room for a line they miss.
    assert sum(r.rewards["correctness"] for r in records) / len(records) >= 0.8
    samples, dropped = samples_from_records(records)
    assert dropped == {} and len(samples) == len(records)
    for r in records:
        root = r.root_sample
        sampled = [tid for tid, m in zip(root.token_ids, root.loss_mask, strict=True) if m]
        expected = [
            tid
            for c in r.calls
            for tid in tokenizer.encode(c.completion_text, add_special_tokens=False)
            + [tokenizer.eos_token_id]
        ]
        assert sampled == expected


@pytest.mark.parametrize("split", ["train", "test"])
def test_oolong_queries_parse_from_either_phrasing(split):
    for seed in range(30):
        t = oolong.generate(seed, 500, split)
        meta, q = t.metadata["query"], oolong_expert.parse_query(t.question)
        assert q.kind == meta["type"], t.question
        if q.kind in ("count", "count_year", "compare_dates"):
            assert q.label == meta["label"]
        if q.kind == "count_year":
            assert q.year == meta["year"]
        if q.kind == "compare_dates":
            assert q.date == meta["date"]

"""Issue 14 in the episode loop, with a scripted root policy and the real sandbox: several
contexts, conversations, async sub-calls, and the parent/child budget split at depth 3."""

from __future__ import annotations

import pytest

from rlm_env.episode import Episode, EpisodeRecord
from rlm_env.episode.config import config_from_dict
from rlm_env.episode.conversation import Conversation
from rlm_env.episode.prompt import contexts_description
from rlm_env.models.scripted import ScriptedPolicy
from rlm_env.tasks.base import Task
from tests.fakes import UpperCaseSubModel, repl


def config(**overrides):
    return config_from_dict({"sandbox": {"cell_timeout_s": 5}}, overrides)


async def test_a_task_with_several_contexts_is_shared_described_and_recorded():
    task = Task(
        id="multi", context="a" * 70_000, question="total length?", more_contexts=(["x", "yy"], "hello")
    )
    policy = ScriptedPolicy(
        [repl("FINAL(len(context_0) + len(context_1) + len(context_2) + (context is context_0))")]
    )
    record = await Episode(task, config(), policy, UpperCaseSubModel()).run()
    assert record.answer.status == "confirmed" and record.answer.content == 70_000 + 2 + 5 + 1
    assert [m["length"] for m in record.contexts_meta] == [70_000, 2, 5]
    assert [m["type_name"] for m in record.contexts_meta] == ["str", "list", "str"]
    assert record.task["num_contexts"] == 3 and record.task["context_types"] == ["str", "list", "str"]
    user = policy.seen[0][1]["content"]
    assert "There are 3 inputs" in user and "`context_2` is a str of 5 characters" in user
    assert "a" * 300 not in user  # metadata only: prefixes are cut to 200 characters
    assert EpisodeRecord.model_validate_json(record.to_json()).contexts_meta == record.contexts_meta


def test_contexts_description_names_each_input():
    text = contexts_description(
        [{"type_name": "str", "length": 3, "prefix": "abc"}, {"type_name": "dict", "length": 1}]
    )
    assert "`context_0` is a str of 3 characters" in text and "`context_1` is a dict with 1 items" in text


async def test_a_conversation_keeps_variables_links_records_and_resets_the_answer():
    def policy_reply(messages):
        user = messages[1]["content"]
        if "Question: first" in user:
            return repl("x = 5\nFINAL('five')")
        if "Question: second" in user and len(messages) == 2:
            assert "history_0" in user  # the prompt tells the model where earlier turns are
            return repl("y = x + 1\nprint(history_0['answer'], history_0['question'])")
        return repl("FINAL(y)")

    policy = ScriptedPolicy([policy_reply] * 3)
    async with Conversation("ctx", config(), policy, UpperCaseSubModel(), conversation_id="c1") as conv:
        first = await conv.ask("first")
        second = await conv.ask("second")
        sandbox_pid = conv.sandbox.pids()
    assert first.answer.content == "five" and second.answer.content == 6
    assert len(second.cells) == 2  # question 0's answer did not end question 1 early
    assert second.cells[0].output == "five first\n"
    assert [(r.conversation_id, r.conversation_index) for r in (first, second)] == [("c1", 0), ("c1", 1)]
    assert first.episode_id != second.episode_id and second.task["id"] == "conversation-c1/q1"
    assert sandbox_pid and conv.sandbox is None  # closed with the conversation, not per question


async def test_async_sub_calls_are_counted_and_recorded_in_issue_order():
    code = (
        "import asyncio\n"
        "ts = [asyncio.ensure_future(llm_query_async(p)) for p in ('a', 'b', 'c')]\n"
        "mine = 40 + 2\n"
        "got = await asyncio.gather(*ts)\n"
        "more = await llm_batch_async(['d', 'e'])\n"
        "FINAL(got + more + [mine])"
    )
    record = await Episode(
        Task(id="t", context="c", question="q"), config(), ScriptedPolicy([repl(code)]), UpperCaseSubModel()
    ).run()
    assert record.answer.content == ["A", "B", "C", "D", "E", 42]
    subs = [c for c in record.calls if c.role == "sub"]
    assert [c.id for c in subs[:3]] == ["sub-1", "sub-2", "sub-3"]
    assert [c.messages[0]["content"] for c in subs[:3]] == ["a", "b", "c"]  # issue order
    assert record.budget["sub_calls"] == 5


def _tree_policy(max_level: int):
    """Root and children call rlm_query one level deeper; the deepest asks for two sub-calls."""

    def reply(messages):
        user = messages[1]["content"]
        for level in range(1, max_level + 1):
            if f"<<<\nL{level}\n>>>" in user:
                if level < max_level:
                    return repl(f"FINAL(rlm_query('L{level + 1}'))")
                return repl(
                    "try:\n    llm_batch(['p', 'q'])\nexcept SubCallError as e:\n    print('refused', e)\n"
                    "FINAL(llm_query('leaf'))"
                )
        return repl("FINAL(rlm_query('L1'))")

    return reply


@pytest.mark.parametrize("unused", ["returns", "forfeited"])
async def test_depth_three_budget_split_is_honoured_and_recorded(unused):
    cfg = config(**{"budget.max_depth": 3, "budget.max_sub_calls": 8, "budget.child_budget_fraction": 0.5,
                    "budget.child_unused_budget": unused})  # fmt: skip
    policy = ScriptedPolicy([_tree_policy(2)] * 3)
    record = await Episode(Task(id="t", context="c", question="q"), cfg, policy, UpperCaseSubModel()).run()
    assert record.answer.content == "LEAF"
    child = record.children[0]
    grandchild = child.children[0]
    assert (record.depth, child.depth, grandchild.depth) == (0, 1, 2)
    # root reserved 1 for rlm_query: 7 left -> child gets 3; child reserved 1: 2 left -> grandchild 1
    assert child.budget["allotment"]["sub_calls"] == 3 and grandchild.budget["allotment"]["sub_calls"] == 1
    # refused on its count (the allotment's 1 left, not the pool's 6) before any prompt is read
    assert (
        grandchild.cells[0].output.startswith("refused") and "1 sub-calls left" in grandchild.cells[0].output
    )
    assert grandchild.budget["subtree_sub_calls"] == 1
    assert child.budget["subtree_sub_calls"] == 2  # its rlm_query + the grandchild's one (which forfeits 0)
    forfeited = child.budget["forfeited_sub_calls"]
    assert forfeited == (1 if unused == "forfeited" else 0)  # child used 2 of its 3
    assert record.budget["sub_calls"] == 3 + forfeited
    # the call-id tree: every id unique and prefixed by its branch, parents linked
    ids = [c.id for c in grandchild.calls]
    assert ids == ["child-1/child-1/root-0", "child-1/child-1/sub-1"]
    assert grandchild.calls[0].parent_id == "child-1/root-0" and child.calls[0].parent_id == "root-0"
    assert grandchild.calls[1].parent_id == "child-1/child-1/root-0"


async def test_a_full_fraction_keeps_the_shared_pool():
    policy = ScriptedPolicy([_tree_policy(1)] * 2)
    cfg = config(**{"budget.max_depth": 2})
    record = await Episode(Task(id="t", context="c", question="q"), cfg, policy, UpperCaseSubModel()).run()
    assert record.children[0].budget["allotment"] is None and record.answer.content == "LEAF"
    assert record.budget["sub_calls"] == 1 + 2 + 1  # rlm_query, the batch of two, the leaf query


def test_ledger_allotments_chain_and_refuse_with_the_reason():
    from rlm_env.episode.budget import BudgetExceeded, BudgetLedger
    from rlm_env.episode.config import BudgetConfig

    ledger = BudgetLedger(BudgetConfig(max_sub_calls=10, max_sub_tokens=1000, child_budget_fraction=0.5))
    child = ledger.child()
    grandchild = child.child()
    assert child.allotment == {"sub_calls": 5, "sub_tokens": 500} and grandchild.allotment["sub_calls"] == 2
    grandchild.reserve_sub_calls(2)
    with pytest.raises(BudgetExceeded, match="allotted to the child RLM at depth 2"):
        grandchild.reserve_sub_calls(1)
    grandchild.add_sub_tokens(200, 60)  # over its 250-token allotment: its next call is refused
    assert child.subtree_sub_tokens == 260 and ledger.sub_tokens_left() == 740
    child.reserve_sub_calls(3)
    with pytest.raises(BudgetExceeded, match="depth 1"):
        child.reserve_sub_calls(1)
    assert ledger.pool.sub_calls == 5 and ledger.sub_calls_left() == 5


@pytest.mark.parametrize("name", ["recursion", "async-subcalls", "conversation"])
def test_issue_14_config_examples_load(name):
    from pathlib import Path

    from rlm_env.episode import load_config

    cfg = load_config(Path(__file__).parent.parent / "configs" / f"{name}.toml")
    if name == "recursion":
        assert cfg.budget.max_depth == 3 and cfg.budget.child_budget_fraction == 0.5

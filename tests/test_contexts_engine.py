"""Issue 14 on the real engine (default model, vLLM in Ray) and the real sandbox: async sub-calls,
recursion depth 2 and 3 with an explicit budget split, several contexts and a conversation.

Structure only, never wording: ids, depths, budgets, token ids. The levels above the deepest
are scripted (a 135M model does not write `rlm_query` on its own); the deepest child's root
turns and every sub-call run on the engine."""

from __future__ import annotations

import pytest

from rlm_env.episode import Episode
from rlm_env.episode.config import config_from_dict
from rlm_env.episode.conversation import Conversation
from rlm_env.models.scripted import ScriptedPolicy
from rlm_env.tasks.base import Task
from tests.fakes import repl

pytestmark = [pytest.mark.engine, pytest.mark.slow]

TASK = Task(id="e2e-14", context="filler line\n" * 50 + "The key is 4411.\n", question="What is the key?")


async def test_async_sub_calls_on_the_engine_keep_order_count_and_concurrency(vllm_client):
    cfg = config_from_dict(
        {"budget": {"max_concurrent_sub_calls": 2}, "sub_sampling": {"max_tokens": 8, "temperature": 0.0}}
    )
    code = (
        "import asyncio\n"
        "ts = [asyncio.ensure_future(llm_query_async(f'Say the number {i}.')) for i in range(3)]\n"
        "local = sum(range(100))\n"
        "got = await asyncio.gather(*ts)\n"
        "more = await llm_batch_async(['Name a color.', 'Name a fruit.', 'Name a tree.'])\n"
        "FINAL({'n': len(got) + len(more), 'local': local})"
    )
    record = await Episode(TASK, cfg, ScriptedPolicy([repl(code)]), vllm_client).run()
    assert record.answer.content == {"n": 6, "local": 4950}, record.cells[-1]
    subs = [c for c in record.calls if c.role == "sub"]
    assert [c.id for c in subs[:3]] == ["sub-1", "sub-2", "sub-3"]
    assert [c.messages[0]["content"] for c in subs[:3]] == [f"Say the number {i}." for i in range(3)]
    assert all(c.completion_token_ids and c.error is None for c in subs) and len(subs) == 6
    assert record.budget["sub_calls"] == 6 and 1 <= record.budget["peak_concurrent_sub_calls"] <= 2
    assert not record.flags.infra_failure


class LevelRouter:
    """Scripted above the deepest level (they call rlm_query one level down), the real engine at
    the deepest: the child whose context is f"L{deepest}"."""

    name = "level-router"

    def __init__(self, engine, deepest: int):
        self.engine, self.deepest = engine, deepest
        self.engine_turns = 0

    async def generate(self, messages, sampling, *, prompt_token_ids=None, session_id=None):
        user = messages[1]["content"]
        if f"<<<\nL{self.deepest}\n>>>" in user:
            self.engine_turns += 1
            return await self.engine.generate(messages, sampling, session_id=session_id)
        level = next((k for k in range(1, self.deepest) if f"<<<\nL{k}\n>>>" in user), 0)
        code = (
            f"try:\n    r = rlm_query('L{level + 1}')\nexcept SubCallError as e:\n    r = 'child failed: ' + str(e)\n"
            "side = llm_query('Say yes.')\nFINAL([r, side])"
        )
        return await ScriptedPolicy([repl(code)]).generate(messages, sampling)

    async def close(self):
        return None


@pytest.mark.parametrize("depth", [2, 3])
async def test_recursion_depth_on_the_engine_with_a_budget_split(vllm_client, depth):
    cfg = config_from_dict(
        {
            "budget": {"max_depth": depth, "max_sub_calls": 40, "max_root_turns": 2, "context_window": 4096,
                       "child_budget_fraction": 0.5, "child_unused_budget": "returns"},
            "root_sampling": {"max_tokens": 64, "temperature": 0.0},
            "sub_sampling": {"max_tokens": 8, "temperature": 0.0},
            "code_fence_languages": ["repl", "python"],
        }
    )  # fmt: skip
    root = LevelRouter(vllm_client, deepest=depth - 1)
    record = await Episode(TASK, cfg, root, vllm_client).run()
    assert not record.flags.infra_failure and root.engine_turns >= 1
    assert record.answer.status == "confirmed" and len(record.answer.content) == 2
    # the tree: one child per level, depths, id prefixes and parent links
    node, prefix, allotted = record, "", cfg.budget.max_sub_calls
    left = allotted
    for level in range(1, depth):
        assert len(node.children) == 1
        parent, node = node, node.children[0]
        prefix += "child-1/"
        assert node.depth == level and node.episode_id.endswith(prefix.rstrip("/"))
        assert all(c.id.startswith(prefix) for c in node.calls)
        assert node.calls[0].role == "child" and node.calls[0].parent_id == parent.calls[0].id
        # the allotment: half of what the parent had left after reserving the rlm_query itself
        left = left - 1
        assert node.budget["allotment"]["sub_calls"] == left // 2
        assert node.budget["subtree_sub_calls"] <= node.budget["allotment"]["sub_calls"]
        left = left // 2
    assert node.depth == depth - 1 and not node.children  # the deepest child ran on the engine
    assert any(c.completion_token_ids for c in node.calls if c.role == "child")
    ids = [c.id for c in _all_calls(record)]
    assert len(ids) == len(set(ids))  # unique over the whole tree
    assert record.budget["sub_calls"] <= cfg.budget.max_sub_calls
    assert record.budget["child_episodes"] == depth - 1


def _all_calls(record):
    yield from record.calls
    for child in record.children:
        yield from _all_calls(child)


async def test_several_contexts_and_a_conversation_on_the_engine(vllm_client):
    cfg = config_from_dict(
        {
            "budget": {"max_root_turns": 2, "context_window": 4096},
            "root_sampling": {"max_tokens": 64, "temperature": 0.0},
            "sub_sampling": {"max_tokens": 8},
            "code_fence_languages": ["repl", "python"],
        }
    )
    async with Conversation("first input " * 10, cfg, vllm_client, more_contexts=(["a", "b"],)) as conv:
        first = await conv.ask("How long is context_0?")
        second = await conv.ask("How many items does context_1 have?")
        bound = await conv.sandbox.run_cell("type(history_0).__name__, sorted(history_0), len(context_1)")
    assert bound.output == "('dict', ['answer', 'messages', 'question', 'stop_reason'], 2)\n", bound
    for index, record in enumerate((first, second)):
        assert record.conversation_index == index and record.conversation_id == conv.conversation_id
        assert [m["length"] for m in record.contexts_meta] == [120, 2]
        assert "There are 2 inputs" in record.root_messages[1]["content"]
        assert not record.flags.infra_failure and record.calls[0].completion_token_ids
    assert "history_0" in second.root_messages[1]["content"]

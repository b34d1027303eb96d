"""Scorers: tiny cases, each of which can fail on its own."""

from __future__ import annotations

import pytest

from rewards.scorers import (
    SCORERS,
    ascore_answer,
    choice_letter,
    contains,
    exact,
    judge_verdict,
    llm_judge,
    multiple_choice,
    normalize,
    numeric,
    pair_f1,
    parse_number,
    score_answer,
    set_f1,
)
from rlm_env.models.base import ModelError


@pytest.mark.parametrize(
    "answer,expected,score",
    [
        ("42", "42", 1.0),
        ("42.0", "42", 1.0),
        (42, "42", 1.0),
        ("1,000", "1000", 1.0),
        ("  The Eiffel   Tower. ", "eiffel tower", 1.0),
        ("K7QX92", "K7-QX92", 1.0),
        ("k7-qx92", "K7-QX92", 1.0),
        ("3.5", "35", 0.0),
        ("-5", "5", 0.0),
        ("Paris", "London", 0.0),
        (None, "x", 0.0),
        ("", "", 0.0),
        (["Paris"], "paris", 1.0),
        (["a", "b"], ["B", "A"], 1.0),
        ('["a", "b"]', ["a", "b"], 1.0),
        (["a"], ["a", "b"], 0.0),
    ],
)
def test_exact(answer, expected, score):
    assert exact(answer=answer, expected=expected) == score


def test_normalize():
    assert normalize("An apple, the PEAR!") == "apple pear"
    assert normalize("Value: 7.50") == normalize("value 7.5")


@pytest.mark.parametrize(
    "answer,expected,kw,score",
    [
        ("42", 42, {}, 1.0),
        (40, 42, {}, 0.75**2),
        ("There are 45 items.", "42", {}, 0.75**3),
        ("1,234", 1234, {}, 1.0),
        ("no idea", 3, {}, 0.0),
        (None, 3, {}, 0.0),
        ("10.5", 10, {"tolerance": 0.5}, 1.0),
        ("12", 10, {"tolerance": 0.5}, 0.75**2),
        ([7], 7, {}, 1.0),
        (True, 1, {}, 0.0),
    ],
)
def test_numeric(answer, expected, kw, score):
    assert numeric(answer=answer, expected=expected, **kw) == pytest.approx(score)


def test_numeric_bad_expected_raises():
    with pytest.raises(ValueError, match="not a number"):
        numeric(answer="1", expected="many")


@pytest.mark.parametrize("text,value", [("-3.5", -3.5), ("in 2023 there were 12", 12.0), ("x", None)])
def test_parse_number(text, value):
    assert parse_number(text) == value


@pytest.mark.parametrize(
    "answer,expected,score",
    [
        (["a", "b"], ["b", "a"], 1.0),
        ("a, b", ["a", "b"], 1.0),
        ('["A"]', ["a", "b"], 2 / 3),
        ([], [], 1.0),
        (["x"], ["a"], 0.0),
        ("a\nb\nc", ["a", "b"], 0.8),
    ],
)
def test_set_f1(answer, expected, score):
    assert set_f1(answer=answer, expected=expected) == pytest.approx(score)


@pytest.mark.parametrize(
    "answer,expected,score",
    [
        ([[1, 2], [3, 4]], [[1, 2], [3, 4]], 1.0),
        ([[2, 1], [4, 3]], [[1, 2], [3, 4]], 1.0),
        ([(1, 2)], [[1, 2], [3, 4]], 2 / 3),
        ("(1, 2), (3, 4)", [[1, 2], [3, 4]], 1.0),
        ("[[1, 2], [3, 4]]", [[1, 2], [3, 4]], 1.0),
        ("[('1', '2')]", [[1, 2]], 1.0),
        ("1, 2\n3, 4", [[1, 2], [3, 4]], 1.0),
        ("1-2\n4-3", [[1, 2], [3, 4]], 1.0),
        ("Pairs: (10, 20) and (30, 40).", [[10, 20], [30, 40]], 1.0),
        ([1, 2], [[1, 2]], 1.0),
        ([[1, 2], [5, 6]], [[1, 2], [3, 4]], 0.5),
        ([], [[1, 2]], 0.0),
        ([], [], 1.0),
        (None, [[1, 2]], 0.0),
        ("no pairs here", [[1, 2]], 0.0),
    ],
)
def test_pair_f1(answer, expected, score):
    assert pair_f1(answer=answer, expected=expected) == pytest.approx(score)


@pytest.mark.parametrize(
    "answer,letter",
    [
        ("B", "B"),
        ("(B)", "B"),
        ("b", "B"),
        ("Answer: B", "B"),
        ("The answer is C.", "C"),
        ("B) foo", "B"),
        ("D. because", "D"),
        ("I pick option A", "A"),
        (["C"], "C"),
        ("the answer is a mystery", None),
        ("no idea", None),
        ("(A) or (B)", None),
    ],
)
def test_choice_letter(answer, letter):
    assert choice_letter(answer) == letter


@pytest.mark.parametrize("answer,score", [("Answer: B", 1.0), ("A", 0.0), ("", 0.0), (None, 0.0)])
def test_multiple_choice(answer, score):
    assert multiple_choice(answer=answer, expected="B") == score


@pytest.mark.parametrize(
    "answer,expected,score",
    [
        ("The code is K7-QX92, I think", "K7-QX92", 1.0),
        ("Paris, France", "paris", 1.0),
        ("Parisian", "Paris", 0.0),
        ("anything", "", 0.0),
    ],
)
def test_contains(answer, expected, score):
    assert contains(answer=answer, expected=expected) == score


class FakeJudge:
    """A judge as rewards take it: an async callable prompt -> reply text."""

    def __init__(self, reply: str = "yes", fail: bool = False):
        self.reply, self.fail, self.prompts = reply, fail, []

    async def __call__(self, prompt: str) -> str:
        self.prompts.append(prompt)
        if self.fail:
            raise ModelError("judge engine down")
        return self.reply


@pytest.mark.parametrize(
    "reply,score", [("Yes.", 1.0), ("no", 0.0), ("YES, they match", 1.0), ("unsure", 0.0)]
)
async def test_llm_judge(reply, score):
    judge = FakeJudge(reply)
    got = await llm_judge(answer="Paris", expected="paris, France", judge=judge, question="Capital?")
    assert got == score
    assert "Capital?" in judge.prompts[0] and "paris, France" in judge.prompts[0]


async def test_llm_judge_propagates_infra_errors():
    with pytest.raises(ModelError):
        await llm_judge(answer="x", expected="y", judge=FakeJudge(fail=True))


async def test_llm_judge_needs_a_judge_and_skips_empty_answers():
    with pytest.raises(ValueError, match="judge"):
        await llm_judge(answer="x", expected="y")
    assert await llm_judge(answer="", expected="y", judge=FakeJudge(fail=True)) == 0.0


def test_judge_verdict():
    assert judge_verdict("No, yes") == 0.0 and judge_verdict("well... yes") == 1.0


def test_registry_and_dispatch():
    assert set(SCORERS) == {
        "exact",
        "numeric",
        "set_f1",
        "pair_f1",
        "multiple_choice",
        "contains",
        "llm_judge",
    }
    assert score_answer("numeric", "41", 42, tolerance=1) == 1.0
    with pytest.raises(KeyError, match="known: contains, exact"):
        score_answer("fuzzy", "a", "a")
    with pytest.raises(TypeError, match="ascore_answer"):
        score_answer("llm_judge", "a", "a")


async def test_ascore_answer():
    assert await ascore_answer("exact", "A", "a") == 1.0
    assert await ascore_answer("llm_judge", "A", "a", judge=FakeJudge("yes")) == 1.0

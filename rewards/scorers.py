"""Scorers: compare a model's answer with a task's expected answer, returning a float in [0, 1].

Plain functions in the verifiers calling style: named arguments (`answer`, `expected`, plus
options) and `**kwargs` so a caller may pass more than a scorer reads. One per scoring rule
of the paper's tasks:

- `exact`: normalized equality (case, whitespace, punctuation, articles "a/an/the", and
  numbers: "42.0" == "42", "1,000" == "1000"); S-NIAH, BrowseComp-Plus, OOLONG labels.
- `numeric`: OOLONG's 0.75 ** |error| (errors within `tolerance` count as exact); numbers are
  parsed out of strings ("There are 42." -> 42; the last number when several).
- `set_f1`, `pair_f1`: F1 over a set of items / over unordered pairs (OOLONG-Pairs); answers
  may be lists, tuples, JSON, or text like "(1, 2), (3, 4)".
- `multiple_choice`: the option letter from "B", "(B)", "Answer: B", "B) foo" (CodeQA).
- `contains`: the normalized reference occurs in the normalized answer.
- `llm_judge` (async): asks a judge (any `async judge(prompt) -> str`, passed in by the caller;
  `rlm_env.models.base.as_judge(client)` makes one from a model client) whether the answer
  matches; the judge's own exceptions propagate (the rubric reads their `infra` attribute).

`SCORERS` maps names to functions; `score_answer` / `ascore_answer` call one by name.
"""

from __future__ import annotations

import ast
import inspect
import json
import re
import string
from typing import Any

_PUNCT = str.maketrans("", "", string.punctuation)
_ARTICLES = re.compile(r"\b(?:a|an|the)\b")
_NUMBER = re.compile(r"(?<![\w.])-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:[eE][-+]?\d+)?(?![\w])")
_NUMBER_LOOSE = re.compile(r"-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:[eE][-+]?\d+)?")


def _text(x: Any) -> str:
    if x is None:
        return ""
    if isinstance(x, str):
        return x
    if isinstance(x, list | tuple | dict):
        return json.dumps(x, default=str)
    return str(x)


def _canon_number(token: str) -> str:
    try:
        v = float(token.replace(",", ""))
    except ValueError:
        return token
    if v.is_integer() and abs(v) < 1e15:
        v = int(v)
    out = str(v)
    return out.replace("-", "\u2212").replace(".", "\u00b7")  # survive punctuation removal


def normalize(x: Any) -> str:
    """Lowercase, canonical numbers, no punctuation, no articles, single spaces."""
    s = _NUMBER.sub(lambda m: _canon_number(m.group()), _text(x).lower()).translate(_PUNCT)
    words = _ARTICLES.sub(" ", s).split()
    return " ".join(words or s.split())  # an answer that is only "a" / "the" stays itself


def _as_list(x: Any) -> list | None:
    """A list from a list/tuple/set, or from a string holding JSON or a Python literal."""
    if isinstance(x, list | tuple | set | frozenset):
        return list(x)
    if isinstance(x, str):
        s = x.strip()
        for parse in (json.loads, ast.literal_eval):
            try:
                v = parse(s)
            except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
                continue
            if isinstance(v, list | tuple | set):
                return list(v)
    return None


def exact(answer: Any, expected: Any, **kwargs: Any) -> float:
    """1.0 when equal after `normalize`; lists compare as sorted lists of normalized items."""
    if answer is None:
        return 0.0
    if isinstance(expected, list | tuple):
        got = _as_list(answer)
        if got is None:
            return 0.0
        return float(sorted(map(normalize, got)) == sorted(map(normalize, expected)))
    if isinstance(answer, list | tuple) and len(answer) == 1:
        answer = answer[0]
    return float(normalize(answer) == normalize(expected) and normalize(expected) != "")


def parse_number(x: Any) -> float | None:
    """A number from an int/float or a string (the whole string, else its last number)."""
    if isinstance(x, bool) or x is None:
        return None
    if isinstance(x, int | float):
        return float(x)
    if isinstance(x, list | tuple) and len(x) == 1:
        return parse_number(x[0])
    s = _text(x).strip()
    try:
        return float(s.replace(",", ""))
    except ValueError:
        pass
    found = _NUMBER_LOOSE.findall(s)
    return float(found[-1].replace(",", "")) if found else None


def numeric(answer: Any, expected: Any, tolerance: float = 0.0, base: float = 0.75, **kwargs: Any) -> float:
    """`base ** |answer - expected|` (1.0 when the error is within `tolerance`); 0 if no number."""
    want = parse_number(expected)
    if want is None:
        raise ValueError(f"numeric scorer: expected answer {expected!r} is not a number")
    got = parse_number(answer)
    if got is None:
        return 0.0
    err = abs(got - want)
    return 1.0 if err <= tolerance else float(base**err)


def _f1(got: set, want: set) -> float:
    if not got and not want:
        return 1.0
    hit = len(got & want)
    if hit == 0:
        return 0.0
    p, r = hit / len(got), hit / len(want)
    return 2 * p * r / (p + r)


def _items(x: Any) -> set[str]:
    items = _as_list(x)
    if items is None:
        items = [p for p in re.split(r"[,;\n]", _text(x))]
    return {n for n in map(normalize, items) if n}


def set_f1(answer: Any, expected: Any, **kwargs: Any) -> float:
    """F1 between the sets of normalized items (lists, JSON, or comma/newline separated)."""
    return _f1(_items(answer), _items(expected))


_PAIR = re.compile(
    r"[\(\[\{]\s*['\"]?([^,()\[\]{}'\"]+?)['\"]?\s*[,;]\s*['\"]?([^,()\[\]{}'\"]+?)['\"]?\s*[\)\]\}]"
)


def parse_pairs(x: Any) -> set[frozenset[str]]:
    """Unordered pairs from a list of 2-sequences, JSON/Python text, "(a, b), (c, d)", or
    lines "a, b" / "a-b"; elements normalized (so 7 == "7" == "7.0")."""
    if x is None:
        return set()
    items = _as_list(x)
    if items is not None and len(items) == 2 and not any(isinstance(i, list | tuple) for i in items):
        items = [items]  # a single pair given flat
    if items is not None and all(isinstance(i, list | tuple) for i in items):
        return {frozenset(map(normalize, i)) for i in items if len(i) == 2}
    text = _text(x)
    found = _PAIR.findall(text)
    if not found:
        found = [tuple(re.split(r"\s*[,;\-\s]\s*", line.strip())) for line in text.splitlines()]
        found = [f for f in found if len(f) == 2]
    return {frozenset((normalize(a), normalize(b))) for a, b in found}


def pair_f1(answer: Any, expected: Any, **kwargs: Any) -> float:
    """F1 over unordered pairs (order inside a pair and in the list does not matter)."""
    return _f1(parse_pairs(answer), parse_pairs(expected))


_MC_PATTERNS = (
    re.compile(r"^\s*[\(\[]?\s*([A-Ja-j])\s*[\)\]\.:]?\s*$"),
    re.compile(r"(?i:answer|option|choice)\s*(?:(?i:is))?\s*[:\-=]?\s*[\(\[]?\s*([A-J])\b"),
    re.compile(r"^\s*[\(\[]?([A-J])[\)\]\.:]"),
)


def choice_letter(x: Any) -> str | None:
    """The option letter in an answer, or None when there is none or it is ambiguous."""
    if isinstance(x, list | tuple) and len(x) == 1:
        x = x[0]
    s = _text(x).strip()
    bracketed = set(re.findall(r"[\(\[]([A-J])[\)\]]", s))
    for i, pat in enumerate(_MC_PATTERNS):
        if i == 2 and len(bracketed) > 1:
            return None  # "(A) or (B)": ambiguous
        m = pat.search(s)
        if m:
            return m.group(1).upper()
    return bracketed.pop() if len(bracketed) == 1 else None


def multiple_choice(answer: Any, expected: Any, **kwargs: Any) -> float:
    """1.0 when the letter found in `answer` is the expected letter."""
    got, want = choice_letter(answer), choice_letter(expected)
    return float(got is not None and got == want)


def contains(answer: Any, expected: Any, **kwargs: Any) -> float:
    """1.0 when the normalized reference appears (as whole words) in the normalized answer."""
    want = normalize(expected)
    return float(bool(want) and f" {want} " in f" {normalize(answer)} ")


JUDGE_PROMPT = (
    "You grade answers. Question: {question}\nReference answer: {expected}\nCandidate answer: {answer}\n"
    "Does the candidate answer match the reference answer in meaning? Reply with only yes or no."
)


async def llm_judge(
    answer: Any,
    expected: Any,
    judge: Any = None,
    question: str | None = None,
    max_tokens: int = 8,
    **kwargs: Any,
) -> float:
    """Ask `judge` (an async callable: prompt -> reply text) whether `answer` matches
    `expected`: 1.0 for yes, else 0.0. An exception raised by the judge propagates to the
    caller (the rubric flags it as infra when it carries `infra = True`)."""
    if judge is None:
        raise ValueError("llm_judge needs a judge (judge=async callable prompt -> str)")
    if answer is None or _text(answer).strip() == "":
        return 0.0
    prompt = JUDGE_PROMPT.format(
        question=question or "(not given)", expected=_text(expected), answer=_text(answer)
    )
    return judge_verdict(await judge(prompt))


def judge_verdict(text: str) -> float:
    """1.0 if the judge's reply says yes (its first yes/no word), else 0.0."""
    m = re.search(r"\b(yes|no)\b", text.lower())
    return float(bool(m) and m.group(1) == "yes")


SCORERS: dict[str, Any] = {
    "exact": exact,
    "numeric": numeric,
    "set_f1": set_f1,
    "pair_f1": pair_f1,
    "multiple_choice": multiple_choice,
    "contains": contains,
    "llm_judge": llm_judge,
}


def get_scorer(name: str) -> Any:
    try:
        return SCORERS[name]
    except KeyError:
        raise KeyError(f"unknown scorer {name!r}; known: {', '.join(sorted(SCORERS))}") from None


def score_answer(scorer_name: str, answer: Any, expected: Any, **kwargs: Any) -> float:
    """Score with a synchronous scorer by name (use `ascore_answer` for `llm_judge`)."""
    fn = get_scorer(scorer_name)
    if inspect.iscoroutinefunction(fn):
        raise TypeError(f"scorer {scorer_name!r} is async: use `await ascore_answer(...)`")
    return float(fn(answer=answer, expected=expected, **kwargs))


async def ascore_answer(scorer_name: str, answer: Any, expected: Any, **kwargs: Any) -> float:
    """Score with any scorer by name, awaiting it when it is async."""
    result = get_scorer(scorer_name)(answer=answer, expected=expected, **kwargs)
    if inspect.isawaitable(result):
        result = await result
    return float(result)

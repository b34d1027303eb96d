"""Task generators: determinism, split disjointness, metadata, length accuracy, registry."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from rlm_env.tasks import TASK_FAMILIES, get_family, make_tasks, parse_length
from rlm_env.tasks.base import ContextDir, ContextFile, Task
from rlm_env.tasks.tokens import TokenCounter

FAMILIES = sorted(TASK_FAMILIES)
SMALL = 3000


def _tokenizer_dir() -> Path | None:
    for cand in (os.environ.get("RLM_ENV_TOKENIZER"), "~/.cache/rlm-env/models/SmolLM2-135M-Instruct"):
        if cand:
            p = Path(cand).expanduser()
            if (p / "tokenizer.json").is_file() or (p.is_file() and p.name == "tokenizer.json"):
                return p
    return None


def _texts(context) -> list[str]:
    if isinstance(context, str):
        return [context]
    if isinstance(context, dict):
        return list(context.values())
    if isinstance(context, ContextFile):
        data = context.path.read_text(encoding="utf-8")
        return list(json.loads(data).values()) if context.kind == "json" else [data]
    if isinstance(context, ContextDir):
        return [p.read_text(encoding="utf-8") for p in sorted(context.path.rglob("*")) if p.is_file()]
    raise TypeError(type(context))


@pytest.mark.parametrize("family", FAMILIES)
def test_deterministic_and_seed_sensitive(family):
    gen = get_family(family).generate
    a, b, c = gen(5, SMALL, "train"), gen(5, SMALL, "train"), gen(6, SMALL, "train")
    assert isinstance(a, Task)
    assert (a.context, a.question, a.expected_answer, a.id) == (
        b.context,
        b.question,
        b.expected_answer,
        b.id,
    )
    assert a.metadata == b.metadata
    assert a.context != c.context and a.id != c.id


@pytest.mark.parametrize("family", FAMILIES)
def test_metadata(family):
    t = get_family(family).generate(1, SMALL, "test")
    m = t.metadata
    assert m["family"] == family and m["split"] == "test" and m["seed"] == 1
    assert m["target_tokens"] == SMALL and m["length_tokens"] > 0
    assert m["length_measure"] in ("exact", "estimated")
    assert t.scorer in ("exact", "numeric", "pair_f1", "multiple_choice", "contains")
    assert t.expected_answer is not None and t.question.strip()
    json.dumps(t.describe())  # the record can hold it


@pytest.mark.parametrize("family", FAMILIES)
def test_splits_disjoint(family):
    gen = get_family(family).generate
    train = [gen(s, SMALL, "train") for s in range(30)]
    test = [gen(s, SMALL, "test") for s in range(30)]
    assert not {t.question for t in train} & {t.question for t in test}
    if family == "codeqa":  # disjoint code bases
        assert not {k for t in train for k in t.context} & {k for t in test for k in t.context}
    elif family == "multihop":  # disjoint worlds: no document title in common
        titles = [{d.split("\n", 1)[0] for d in t.context.values()} for t in (train + test)]
        assert not set().union(*titles[:30]) & set().union(*titles[30:])
    else:  # no item (line / needle sentence) in common

        def items(ts):
            return {
                line.split("Instance: ")[-1]
                for t in ts
                for line in t.context.splitlines()
                if "Instance:" in line
            }

        if family.startswith("oolong"):
            assert not items(train) & items(test)
        else:
            keys = {t.metadata["needle_key"] for t in train}
            assert not keys & {t.metadata["needle_key"] for t in test}


def test_bad_arguments():
    with pytest.raises(ValueError, match="split"):
        get_family("niah").generate(0, SMALL, "dev")
    with pytest.raises(ValueError, match="known: codeqa, multihop, niah, oolong, oolong_pairs"):
        make_tasks("nope", ["8k"], 1)
    with pytest.raises(ValueError, match="needle_kind"):
        get_family("niah").generate(0, SMALL, needle_kind="emoji")


@pytest.mark.parametrize(
    "text,n",
    [
        ("8k", 8000),
        ("32000", 32000),
        ("1M", 1_000_000),
        ("1.5m", 1_500_000),
        ("8Ki", 8192),
        ("2^13", 8192),
        (4096, 4096),
        ("10_000", 10000),
    ],
)
def test_parse_length(text, n):
    assert parse_length(text) == n


@pytest.mark.parametrize("bad", ["", "8q", "-5", "0", "k8"])
def test_parse_length_errors(bad):
    with pytest.raises(ValueError):
        parse_length(bad)


def test_make_tasks_grid():
    tasks = make_tasks("niah", ["2k", 3000], n=2, split="train", seed=7)
    assert [t.metadata["target_tokens"] for t in tasks] == [2000, 2000, 3000, 3000]
    assert [t.metadata["seed"] for t in tasks] == [7, 8, 7, 8]
    assert len({t.id for t in tasks}) == 4


def test_knobs_change_the_id():
    a = get_family("niah").generate(0, SMALL, needle_kind="code")
    b = get_family("niah").generate(0, SMALL, needle_kind="number")
    assert a.id != b.id and a.metadata["knobs"] == {"needle_kind": "code"}


@pytest.mark.parametrize("family,suffix", [("niah", ".txt"), ("oolong", ".txt"), ("multihop", ".json")])
def test_big_contexts_go_to_files(tmp_path, family, suffix):
    t = get_family(family).generate(2, 20_000, "train", out_dir=str(tmp_path), file_threshold_tokens=10_000)
    assert isinstance(t.context, ContextFile) and t.context.path.suffix == suffix
    assert t.context.path.parent == tmp_path
    texts = _texts(t.context)  # valid JSON for dict contexts
    assert t.metadata["length_measure"] == "estimated"
    assert 0.8 < t.metadata["length_tokens"] / 20_000 < 1.2
    if family == "niah":
        assert t.expected_answer in texts[0]


def test_codeqa_big_context_is_a_directory(tmp_path):
    t = get_family("codeqa").generate(2, 20_000, "train", out_dir=str(tmp_path), file_threshold_tokens=10_000)
    assert isinstance(t.context, ContextDir)
    files = sorted(str(p.relative_to(t.context.path)) for p in t.context.path.rglob("*.py"))
    assert len(files) == t.metadata["n_files"]


@pytest.mark.parametrize("family", FAMILIES)
def test_estimate_without_tokenizer(family):
    t = get_family(family).generate(3, 8000, "train", counter=TokenCounter(False))
    assert t.metadata["length_measure"] == "estimated" and t.metadata["tokenizer"] is None
    assert abs(t.metadata["length_tokens"] - 8000) / 8000 < 0.1


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("length", [8000, 32000])
def test_length_accuracy_real_tokenizer(family, length):
    path = _tokenizer_dir()
    if path is None:
        pytest.skip(
            "no SmolLM2 tokenizer in ~/.cache/rlm-env/models/SmolLM2-135M-Instruct (or $RLM_ENV_TOKENIZER)"
        )
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(path if path.is_file() else path / "tokenizer.json"))
    t = get_family(family).generate(11, length, "test", counter=TokenCounter(path))
    n = sum(len(tok.encode(x, add_special_tokens=False).ids) for x in _texts(t.context))
    assert abs(n - length) / length <= 0.10, (n, length)
    assert t.metadata["length_measure"] == "exact"
    assert abs(t.metadata["length_tokens"] - n) / n < 0.01


@pytest.mark.parametrize("family", ["niah", "oolong", "oolong_pairs"])
def test_generated_text_contexts_are_ascii(family):
    """Pure-ASCII text is what lets 16 episodes share one copy of a context (see BENCHMARKS.md)."""
    from rlm_env.tasks import make_tasks

    for task in make_tasks(family, [8000], 3, split="test", seed=11):
        assert isinstance(task.context, str) and task.context.isascii()

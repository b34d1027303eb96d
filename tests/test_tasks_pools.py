"""Word pools and templates: large, deterministic, and disjoint between train and test.

A probe trained on 16 train adjectives memorised them and failed on unseen sentence templates;
these tests pin the remedy: hundreds of words per split, many templates, no overlap."""

from __future__ import annotations

import re

import pytest

from rlm_env.tasks import multihop, niah, oolong
from rlm_env.tasks.tokens import TokenCounter
from rlm_env.tasks.words import ADJECTIVES, FIRST_NAMES, NOUNS, SURNAMES, VERBS, split_words, word_split

FAST = TokenCounter(False)  # small contexts, no tokenizer: hundreds of tasks in a second
SEEDS = range(300)


def test_word_lists_are_clean_and_unique():
    for words in (ADJECTIVES, NOUNS, VERBS):
        assert len(words) == len(set(words))
        assert all(re.fullmatch(r"[a-z]+", w) for w in words)  # keys parse as [a-z]+-[a-z]+
    assert not set(ADJECTIVES) & set(NOUNS)
    for names in (FIRST_NAMES, SURNAMES):
        assert len(names) == len(set(names)) and all(re.fullmatch(r"[A-Z][a-z]+", n) for n in names)


@pytest.mark.parametrize(
    "words,train_min,test_min",
    [(ADJECTIVES, 300, 120), (NOUNS, 240, 100), (FIRST_NAMES, 160, 90), (SURNAMES, 160, 80)],
)
def test_split_word_pools_are_large_and_disjoint(words, train_min, test_min):
    train, test = split_words(words, "train"), split_words(words, "test")
    assert len(train) >= train_min and len(test) >= test_min
    assert not set(train) & set(test)
    assert set(train) | set(test) == set(words)
    assert all(word_split(w) == "test" for w in test)


def test_niah_templates_are_many_and_disjoint():
    train, test = niah.pools("train"), niah.pools("test")
    for part, least in (("needles", 10), ("questions", 6)):
        for kind in niah.NEEDLE_KINDS:
            a, b = train[part][kind], test[part][kind]
            assert len(a) >= least and len(b) >= least
            assert len(set(a)) == len(a) and not set(a) & set(b)
            assert all("{key}" in t for t in a + b)
    # the value sits at the start, in the middle and at the end of needle sentences
    for split in (train, test):
        positions = {
            "end" if t.rstrip('."').endswith("{value}") else "start" if t.index("{value}") < 12 else "middle"
            for kind in niah.NEEDLE_KINDS
            for t in split["needles"][kind]
        }
        assert positions >= {"middle", "end"}


def _tasks(split: str) -> list:
    return [niah.generate(s, 400, split, counter=FAST) for s in SEEDS]


def test_niah_keys_templates_and_values_never_cross_splits():
    train, test = _tasks("train"), _tasks("test")
    for field in ("needle_key", "needle_template", "question_template"):
        assert not {t.metadata[field] for t in train} & {t.metadata[field] for t in test}, field
    assert not {t.question for t in train} & {t.question for t in test}

    def words(tasks):
        return {w for t in tasks for w in t.metadata["needle_key"].split("-")}

    assert not words(train) & words(test)
    phrases = [t for t in train + test if t.metadata["needle_kind"] == "phrase"]
    assert phrases
    for t in phrases:  # phrase values come from the task's own split
        assert all(word_split(w) == t.metadata["split"] for w in t.expected_answer.split())
    # 300 seeds use most of the pools: no small set of keys a model could memorise
    assert len({t.metadata["needle_key"].split("-")[0] for t in train}) > 150
    assert len({t.metadata["needle_template"] for t in train}) == sum(
        len(niah.pools("train")["needles"][k]) for k in niah.NEEDLE_KINDS
    )


@pytest.mark.parametrize("split", ["train", "test"])
def test_niah_metadata_names_the_templates_used(split):
    for seed in range(30):
        t = niah.generate(seed, 400, split, counter=FAST)
        m = t.metadata
        tsplit, kind, index = m["needle_template"].split("/")
        assert (tsplit, kind) == (split, m["needle_kind"])
        needle = niah.pools(split)["needles"][kind][int(index)].format(
            key=m["needle_key"], value=t.expected_answer
        )
        assert needle in t.context
        qsplit, qkind, qindex = m["question_template"].split("/")
        template = niah.pools(split)["questions"][qkind][int(qindex)]
        assert t.question.startswith(template.format(key=m["needle_key"]))


@pytest.mark.parametrize("split", ["train", "test"])
def test_people_in_multihop_and_oolong_come_from_their_split(split):
    first, last = set(split_words(FIRST_NAMES, split)), set(split_words(SURNAMES, split))
    for seed in range(3):
        t = multihop.generate(seed, 6000, split, counter=FAST)
        people = [d.split("\n", 1)[0] for d in t.context.values()]
        people = [p for p in people if p.split()[0] in first or p.split()[-1] in last]
        assert len(people) > 5
        assert all(p.split()[0] in first and p.split()[-1] in last for p in people)
    # oolong's people ("What instrument does Ines Okafor play?") are the split's too
    t = oolong.generate(0, 6000, split, counter=FAST)
    other = "test" if split == "train" else "train"
    other_names = set(split_words(FIRST_NAMES, other))
    words = set(re.findall(r"\b[A-Z][a-z]+\b", t.context))
    assert words & first and not words & (other_names - first)


def test_multihop_phrasings_are_many_disjoint_and_recorded():
    train, test = multihop._PHRASES["train"], multihop._PHRASES["test"]
    for rel in [*multihop.RELATIONS, "q"]:
        assert len(train[rel]) >= 3 and len(test[rel]) >= 3
        assert not set(train[rel]) & set(test[rel])
    used = set()
    for seed in range(20):
        t = multihop.generate(seed, 6000, "train", counter=FAST)
        picks = t.metadata["question_templates"]
        assert len(picks) == t.metadata["hops"] + 1
        desc = t.metadata["start"]
        for rel, pick in zip(t.metadata["relations"], picks, strict=False):
            desc = train[rel][pick].format(x=desc)
        assert t.question == train["q"][picks[-1]].format(x=desc)
        used |= {(rel, p) for rel, p in zip(t.metadata["relations"], picks, strict=False)}
    assert len({p for _, p in used}) == 3  # every phrasing index comes up


def test_oolong_templates_are_many_and_disjoint():
    train, test = oolong._TEMPLATES["train"], oolong._TEMPLATES["test"]
    for label in oolong.LABELS:
        assert len(train[label]) >= 7 and len(test[label]) >= 7
        assert not set(train[label]) & set(test[label])

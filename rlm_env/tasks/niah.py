"""S-NIAH: one needle in a long haystack (the paper's single needle-in-a-haystack task).

The paper builds S-NIAH RULER-style: a single fact ("the special magic number for X is N")
is hidden in unrelated filler and the question asks for it. This is the search-like end of
the benchmark: an RLM solves it with code (`re.search`) without any sub-call.

A task here hides one needle whose key is an invented two-word name ("crimson-otter") and
whose value is a 7-digit number, a code like "K7-QX92", or a three-word phrase. To make plain
substring search on the question's words insufficient, `n_distractors` near-needles are
scattered too: the same kinds of sentences for *similar* keys ("crimson-heron",
"amber-otter", "crimson-otter-2") with different values. The filler mixes real text found
on any Debian + Python machine (stdlib source and docstrings, license texts, package
copyright files; see `filler.py`) with generated prose. The needle sits at `depth` (a
fraction of the text, default random), always between paragraphs.

Splits are disjoint by construction: train and test draw keys from disjoint word pools, and
use different needle sentences and question phrasings, as well as different seed streams.

    task = generate(seed=3, length_tokens=32_000, split="test", needle_kind="code")
    task.expected_answer   # e.g. "K7-QX92"; scorer "exact"
"""

from __future__ import annotations

import string
import sys
from typing import Any

from rlm_env.tasks.base import Task
from rlm_env.tasks.filler import available_sources, filler_stream
from rlm_env.tasks.sizing import Sink, base_metadata, build_sized, check_split, output_path, rng_for, task_id
from rlm_env.tasks.tokens import TokenCounter

FAMILY = "niah"
SCORER = "exact"
CHARS_PER_TOKEN = 3.75
"""Measured with the SmolLM2 tokenizer on the mixed filler (used only without a tokenizer)."""
NEEDLE_KINDS = ("number", "code", "phrase")

_POOLS: dict[str, dict[str, Any]] = {
    "train": {
        "adjectives": (
            "crimson",
            "amber",
            "silent",
            "rapid",
            "golden",
            "hollow",
            "bitter",
            "lucky",
            "frosty",
            "gentle",
            "rusty",
            "violet",
            "brave",
            "misty",
            "proud",
            "sandy",
        ),
        "nouns": (
            "otter",
            "heron",
            "falcon",
            "badger",
            "lantern",
            "anchor",
            "meadow",
            "quarry",
            "walrus",
            "cactus",
            "harbor",
            "comet",
            "pebble",
            "thistle",
            "orchid",
            "beacon",
        ),
        "words": (
            "blue",
            "river",
            "sings",
            "paper",
            "moon",
            "quiet",
            "stone",
            "dances",
            "over",
            "seven",
            "bridges",
            "apple",
            "winter",
            "glass",
            "tiger",
            "sleeps",
        ),
        "needles": {
            "number": (
                "The special magic number for {key} is {value}.",
                "Remember that the secret number of {key} is {value}.",
                "For the record, {key} has the lucky number {value}.",
            ),
            "code": (
                "The access code for {key} is {value}.",
                "The vault of {key} opens with the code {value}.",
            ),
            "phrase": (
                'The secret passphrase of {key} is "{value}".',
                'Whenever {key} is mentioned, the password is "{value}".',
            ),
        },
        "questions": {
            "number": (
                "What is the special magic number for {key}?",
                "Which number is the secret number of {key} mentioned in the text?",
            ),
            "code": ("What is the access code for {key}?", "Which code opens the vault of {key}?"),
            "phrase": ("What is the secret passphrase of {key}?", "What password goes with {key}?"),
        },
    },
    "test": {
        "adjectives": (
            "scarlet",
            "copper",
            "muted",
            "swift",
            "silver",
            "vacant",
            "sour",
            "fortunate",
            "icy",
            "tender",
            "dusty",
            "indigo",
            "bold",
            "foggy",
            "humble",
            "stony",
        ),
        "nouns": (
            "beaver",
            "stork",
            "kestrel",
            "ferret",
            "candle",
            "compass",
            "prairie",
            "canyon",
            "narwhal",
            "juniper",
            "jetty",
            "meteor",
            "marble",
            "nettle",
            "tulip",
            "lighthouse",
        ),
        "words": (
            "green",
            "valley",
            "hums",
            "ink",
            "sun",
            "silent",
            "iron",
            "runs",
            "under",
            "nine",
            "towers",
            "pear",
            "summer",
            "clay",
            "wolf",
            "wakes",
        ),
        "needles": {
            "number": (
                "The hidden numeric code belonging to {key} reads {value}.",
                "Note: the magic value registered under {key} equals {value}.",
                "{key}'s special number, for anyone asking, is {value}.",
            ),
            "code": (
                "Use the passcode {value} to unlock {key}.",
                "The registration tag of {key} is {value}.",
            ),
            "phrase": (
                'The watchword chosen by {key} is "{value}".',
                '{key} can be recognised by the phrase "{value}".',
            ),
        },
        "questions": {
            "number": (
                "Find the magic number that belongs to {key}. What is it?",
                "The text hides a number for {key}. Report that number.",
            ),
            "code": ("Which passcode unlocks {key}?", "What is the registration tag of {key}?"),
            "phrase": ("Which watchword was chosen by {key}?", "By what phrase can {key} be recognised?"),
        },
    },
}
_ANSWER_HINT = {
    "number": " Answer with the number only.",
    "code": " Answer with the code only.",
    "phrase": " Answer with the phrase only, without quotes.",
}


def _value(kind: str, rng, words: tuple[str, ...]) -> str:
    if kind == "number":
        return str(rng.randint(1_000_000, 9_999_999))
    if kind == "code":
        up = string.ascii_uppercase
        return f"{rng.choice(up)}{rng.randint(1, 9)}-{rng.choice(up)}{rng.choice(up)}{rng.randint(10, 99)}"
    return " ".join(rng.sample(words, 3))


def _near_keys(adj: str, noun: str, pools: dict, rng, n: int) -> list[str]:
    """Keys that share a word with (adj, noun) but are never equal to it."""
    cands = [f"{adj}-{x}" for x in pools["nouns"] if x != noun]
    cands += [f"{x}-{noun}" for x in pools["adjectives"] if x != adj]
    rng.shuffle(cands)
    out = [f"{adj}-{noun}-{rng.randint(2, 9)}"] + cands
    return out[:n]


def generate(
    seed: int,
    length_tokens: int,
    split: str = "train",
    *,
    needle_kind: str | None = None,
    depth: float | None = None,
    n_distractors: int = 3,
    filler: str | list[str] | None = None,
    out_dir: str | None = None,
    file_threshold_tokens: int | None = None,
    counter: TokenCounter | None = None,
) -> Task:
    """One S-NIAH task. `filler`: a source name or list of them (see `filler.SOURCES`),
    default all available. Contexts of at least `file_threshold_tokens` go to a file in
    `out_dir` (a `ContextFile`)."""
    check_split(split)
    knobs = {
        k: v for k, v in dict(needle_kind=needle_kind, depth=depth, filler=filler).items() if v is not None
    }
    if n_distractors != 3:
        knobs["n_distractors"] = n_distractors
    pools = _POOLS[split]
    rng = rng_for(FAMILY, split, seed, "spec")
    kind = needle_kind or rng.choice(NEEDLE_KINDS)
    if kind not in NEEDLE_KINDS:
        raise ValueError(f"needle_kind must be one of {NEEDLE_KINDS}, got {kind!r}")
    depth = rng.uniform(0.05, 0.95) if depth is None else float(depth)
    if not 0.0 <= depth <= 1.0:
        raise ValueError(f"depth must be within [0, 1], got {depth}")
    adj, noun = rng.choice(pools["adjectives"]), rng.choice(pools["nouns"])
    key = f"{adj}-{noun}"
    value = _value(kind, rng, pools["words"])
    needle = rng.choice(pools["needles"][kind]).format(key=key, value=value)
    inserts = [(depth, needle)]
    for near in _near_keys(adj, noun, pools, rng, n_distractors):
        other = value
        while other == value:
            other = _value(kind, rng, pools["words"])
        inserts.append(
            (rng.uniform(0.02, 0.98), rng.choice(pools["needles"][kind]).format(key=near, value=other))
        )
    inserts.sort(key=lambda x: x[0])
    question = rng.choice(pools["questions"][kind]).format(key=key) + _ANSWER_HINT[kind]
    sources = [filler] if isinstance(filler, str) else filler

    def write(sink: Sink) -> None:
        stream = filler_stream(rng_for(FAMILY, split, seed, "filler"), sources)
        pending = list(inserts)
        while not sink.full:
            while pending and sink.chars >= pending[0][0] * sink.budget:
                sink.add(pending.pop(0)[1] + "\n\n")
            sink.add(next(stream) + "\n\n")
        for _, sentence in pending:
            sink.add(sentence + "\n\n")

    tid = task_id(FAMILY, split, seed, length_tokens, knobs)
    path = output_path(tid, length_tokens, out_dir, file_threshold_tokens, ".txt")
    sized = build_sized(write, length_tokens, chars_per_token=CHARS_PER_TOKEN, counter=counter, path=path)
    meta = base_metadata(FAMILY, split, seed, length_tokens, sized, knobs)
    meta.update(
        needle_kind=kind,
        needle_key=key,
        depth=round(depth, 4),
        n_distractors=n_distractors,
        filler_sources=sources or sorted(available_sources()),
        python_version=sys.version.split()[0],
    )
    return Task(tid, sized.context, question, value, SCORER, meta)

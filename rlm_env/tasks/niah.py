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

Splits are disjoint by construction: train and test draw keys from disjoint word pools
(hundreds of adjectives and nouns each, see `words.py`), and use different needle sentences
(10-12 per kind, the value at the start, middle or end) and question phrasings (6-8 per kind),
as well as different seed streams. The metadata names the templates used
(`needle_template`, `question_template`: "<split>/<kind>/<index>").

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
from rlm_env.tasks.words import ADJECTIVES, NOUNS, VERBS, split_words

FAMILY = "niah"
SCORER = "exact"
CHARS_PER_TOKEN = 3.75
"""Measured with the SmolLM2 tokenizer on the mixed filler (used only without a tokenizer)."""
NEEDLE_KINDS = ("number", "code", "phrase")

_TEMPLATES: dict[str, dict[str, dict[str, tuple[str, ...]]]] = {
    "train": {
        "needles": {
            "number": (
                "The special magic number for {key} is {value}.",
                "Remember that the secret number of {key} is {value}.",
                "For the record, {key} has the lucky number {value}.",
                "The number {value} is the magic number assigned to {key}.",
                "According to the ledger, {value} is the number kept for {key}, and for nobody else.",
                "Agents were told that {key} answers to the number {value} this season.",
                "In the archive, entry {value} belongs to {key} and is its magic number.",
                "{key} was given the secret number {value} last spring.",
                "Officially, the magic number of {key} is {value}; do not forget it.",
                "Among all the numbers, only {value} is linked to {key}.",
                "The census lists {value} as the special number of {key}.",
                "Write this down: {key} goes with the number {value}.",
            ),
            "code": (
                "The access code for {key} is {value}.",
                "The vault of {key} opens with the code {value}.",
                "Code {value} grants access to {key}.",
                "To enter {key}, type the code {value} at the door.",
                "The guard of {key} only accepts the code {value}.",
                "Security memo: {value} is the access code of {key}.",
                "{key} changed its access code to {value} yesterday.",
                "The code {value} unlocks the vault belonging to {key}, the manual says.",
                "Only visitors with code {value} may see {key}.",
                "A sticker on the box of {key} shows the code {value}.",
            ),
            "phrase": (
                'The secret passphrase of {key} is "{value}".',
                'Whenever {key} is mentioned, the password is "{value}".',
                'The passphrase "{value}" belongs to {key}.',
                'To greet {key}, say "{value}" quietly.',
                '{key} answers only to the password "{value}".',
                'Say "{value}" and {key} will let you pass.',
                'The password written on the door of {key} is "{value}".',
                'Everyone knows that "{value}" is the passphrase of {key}.',
                'Guests must tell {key} the password "{value}" at the gate.',
                'Its keepers chose "{value}" as the secret passphrase for {key}.',
            ),
        },
        "questions": {
            "number": (
                "What is the special magic number for {key}?",
                "Which number is the secret number of {key} mentioned in the text?",
                "What number was given to {key}?",
                "Tell me the magic number of {key}.",
                "Which special number belongs to {key}?",
                "The document mentions a secret number for {key}. What is it?",
                "What is {key}'s lucky number?",
                "Look up the number assigned to {key}. Which number is it?",
            ),
            "code": (
                "What is the access code for {key}?",
                "Which code opens the vault of {key}?",
                "What code grants access to {key}?",
                "Tell me the access code of {key}.",
                "Which code must be typed to enter {key}?",
                "The text contains an access code for {key}. What is it?",
            ),
            "phrase": (
                "What is the secret passphrase of {key}?",
                "What password goes with {key}?",
                "Which passphrase belongs to {key}?",
                "Tell me the password that {key} answers to.",
                "What must one say to pass {key}?",
                "The text gives a password for {key}. What is it?",
            ),
        },
    },
    "test": {
        "needles": {
            "number": (
                "The hidden numeric code belonging to {key} reads {value}.",
                "Note: the magic value registered under {key} equals {value}.",
                "{key}'s special number, for anyone asking, is {value}.",
                "Whoever meets {key} should know its number: {value}.",
                "A quiet clerk filed {value} as the number that identifies {key}.",
                "Number {value} has been reserved for {key} since the start.",
                "Rumour says {key} keeps the number {value} under its pillow.",
                "Please note that {value} is what {key} uses as its magic number.",
                "The tally for {key} came to exactly {value}, the special figure.",
                "It was {value}, the magic number, that {key} chose.",
                "By decree, {key} holds the number {value}.",
                "The notebook pairs {key} with the number {value} and nothing else.",
            ),
            "code": (
                "Use the passcode {value} to unlock {key}.",
                "The registration tag of {key} is {value}.",
                "Passcode {value} is what opens {key}.",
                "{key} is protected by the passcode {value}.",
                "Engraved under {key} is the tag {value}.",
                "For {key}, the registered passcode reads {value}.",
                "The tag {value} was stamped on {key} at the factory.",
                "Anyone holding passcode {value} may unlock {key}.",
                "The clerk registered {key} under the tag {value}.",
                "If asked about {key}, give the passcode {value}.",
            ),
            "phrase": (
                'The watchword chosen by {key} is "{value}".',
                '{key} can be recognised by the phrase "{value}".',
                'The watchword "{value}" identifies {key}.',
                'Shout "{value}" and {key} will recognise you.',
                'Only the phrase "{value}" opens the gate of {key}.',
                'The watchword of {key}, spoken softly, is "{value}".',
                'Long ago {key} adopted "{value}" as its watchword.',
                'A letter reveals that {key} uses the phrase "{value}".',
                'Recite "{value}" in front of {key} to be recognised.',
                'Scouts confirm the watchword of {key}: "{value}".',
            ),
        },
        "questions": {
            "number": (
                "Find the magic number that belongs to {key}. What is it?",
                "The text hides a number for {key}. Report that number.",
                "Which figure is recorded as the number of {key}?",
                "Report the special number held by {key}.",
                "What number identifies {key}?",
                "Somewhere a number is reserved for {key}; which one?",
                "What is the number filed under {key}?",
                "Give the magic figure of {key}.",
            ),
            "code": (
                "Which passcode unlocks {key}?",
                "What is the registration tag of {key}?",
                "Report the passcode that protects {key}.",
                "Which tag was registered for {key}?",
                "What passcode should be given for {key}?",
                "Somewhere the passcode of {key} is written; what is it?",
            ),
            "phrase": (
                "Which watchword was chosen by {key}?",
                "By what phrase can {key} be recognised?",
                "Report the watchword of {key}.",
                "What phrase identifies {key}?",
                "Which words does {key} use as its watchword?",
                "What must be recited to be recognised by {key}?",
            ),
        },
    },
}
"""Needle sentences and questions per split and kind: disjoint between splits, with the value
at the start, in the middle and at the end of the sentence, so a model must extract it by its
shape rather than by its position in one familiar sentence."""


def pools(split: str) -> dict[str, Any]:
    """The word pools and templates of one split (`adjectives`, `nouns`, `words`, `needles`,
    `questions`); the two splits share no word and no template."""
    check_split(split)
    return {
        "adjectives": split_words(ADJECTIVES, split),
        "nouns": split_words(NOUNS, split),
        "verbs": split_words(VERBS, split),
        **_TEMPLATES[split],
    }


_ANSWER_HINT = {
    "number": " Answer with the number only.",
    "code": " Answer with the code only.",
    "phrase": " Answer with the phrase only, without quotes.",
}


def _value(kind: str, rng, pools: dict[str, Any]) -> str:
    if kind == "number":
        return str(rng.randint(1_000_000, 9_999_999))
    if kind == "code":
        up = string.ascii_uppercase
        return f"{rng.choice(up)}{rng.randint(1, 9)}-{rng.choice(up)}{rng.choice(up)}{rng.randint(10, 99)}"
    return " ".join(rng.choice(pools[part]) for part in ("adjectives", "nouns", "verbs"))


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
    split_pools = pools(split)
    rng = rng_for(FAMILY, split, seed, "spec")
    kind = needle_kind or rng.choice(NEEDLE_KINDS)
    if kind not in NEEDLE_KINDS:
        raise ValueError(f"needle_kind must be one of {NEEDLE_KINDS}, got {kind!r}")
    depth = rng.uniform(0.05, 0.95) if depth is None else float(depth)
    if not 0.0 <= depth <= 1.0:
        raise ValueError(f"depth must be within [0, 1], got {depth}")
    needles, questions = split_pools["needles"][kind], split_pools["questions"][kind]
    adj, noun = rng.choice(split_pools["adjectives"]), rng.choice(split_pools["nouns"])
    key = f"{adj}-{noun}"
    value = _value(kind, rng, split_pools)
    needle_index = rng.randrange(len(needles))
    inserts = [(depth, needles[needle_index].format(key=key, value=value))]
    for near in _near_keys(adj, noun, split_pools, rng, n_distractors):
        other = value
        while other == value:
            other = _value(kind, rng, split_pools)
        inserts.append((rng.uniform(0.02, 0.98), rng.choice(needles).format(key=near, value=other)))
    inserts.sort(key=lambda x: x[0])
    question_index = rng.randrange(len(questions))
    question = questions[question_index].format(key=key) + _ANSWER_HINT[kind]
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
        needle_template=f"{split}/{kind}/{needle_index}",
        question_template=f"{split}/{kind}/{question_index}",
        depth=round(depth, 4),
        n_distractors=n_distractors,
        filler_sources=sources or sorted(available_sources()),
        python_version=sys.version.split()[0],
    )
    return Task(tid, sized.context, question, value, SCORER, meta)

"""OOLONG-like aggregation over thousands of short labelled-by-meaning items.

OOLONG's trec_coarse split gives the model thousands of short questions, one per line, each
with a date and a user id. Every question has an implicit label, the TREC coarse class of
the answer it asks for, which is never written down: the model must infer it from meaning
("What does NATO stand for?" is an abbreviation; "How far is Oslo from Rome?" numeric).
The query then asks an aggregate over those inferred labels: a count, the most or least
frequent label, a comparison across dates. This is dense work; in the paper sub-calls
(classifying chunks with `llm_query`) paid off most here.

Each line reads `Date: Mar 03, 2023 || User: 48213 || Instance: <question>`. Instances come
from templates, seven per label and split, filled from word pools; train and test use different
templates and different name/place/title pools (so no instance, and no query, is shared),
and their own seed streams. The label mix is skewed per task so most/least frequent is
well-defined (a tie turns the query into a count).

Queries (`query` knob, default random): "count" and "count_year" (numeric answers, scored
0.75^|error| by the "numeric" scorer), "most_frequent" / "least_frequent" (a label) and
"compare_dates" ("yes"/"no"), both scored "exact".
"""

from __future__ import annotations

import datetime as dt
import functools
import random
from collections import Counter
from collections.abc import Iterator
from typing import Any

from rlm_env.tasks.base import Task
from rlm_env.tasks.sizing import Sink, base_metadata, build_sized, check_split, output_path, rng_for, task_id
from rlm_env.tasks.tokens import TokenCounter
from rlm_env.tasks.words import FIRST_NAMES, SURNAMES, split_words

FAMILY = "oolong"
CHARS_PER_TOKEN = 2.42
"""Measured with the SmolLM2 tokenizer on these lines (used only without a tokenizer)."""
LABELS = ("abbreviation", "description", "entity", "human", "location", "numeric")
QUERIES = ("count", "count_year", "most_frequent", "least_frequent", "compare_dates")
START_DATE = dt.date(2022, 1, 1)
N_DAYS = 3 * 365

_TEMPLATES: dict[str, dict[str, tuple[str, ...]]] = {
    "train": {
        "abbreviation": (
            "What does {acr} stand for?",
            "What is the full form of {acr}?",
            "{acr} is short for what?",
            "What do the letters {acr} mean on a {device} label?",
            "What does the abbreviation {acr} mean?",
            "Spell out {acr}, please.",
            "On the {device} manual, what does {acr} refer to?",
        ),
        "description": (
            "Why do {animals} gather in {season}?",
            "How does a {device} work?",
            "What is the meaning of the word '{word}'?",
            "What causes {phenomenon}?",
            "Why do people {verb_phrase}?",
            "How does {phenomenon} happen?",
            "What causes a {device} to overheat?",
        ),
        "entity": (
            "What instrument does {person} play?",
            "What is the name of {person}'s boat?",
            "Which animal appears on the flag of {place}?",
            "What kind of fruit did {person} bring to the fair?",
            "What is the favourite colour of {person}?",
            "Which bird nests on the roofs of {place}?",
            "What game does {person} play on Sundays?",
        ),
        "human": (
            "Who invented the {device}?",
            "Who wrote the novel {title}?",
            "Which painter created {title}?",
            "What was the name of the first mayor of {place}?",
            "Who discovered the cause of {phenomenon}?",
            "Who painted {title}?",
            "Who is the head of the {org} in {place}?",
        ),
        "location": (
            "Where is {place} located?",
            "In which country is {place}?",
            "What city hosted the {event} in {year}?",
            "Where did {person} grow up?",
            "Where was {title} written?",
            "In which country was the {device} invented?",
            "Where does {person} spend the winter?",
        ),
        "numeric": (
            "How many {things} are there in {place}?",
            "When did {person} finish {title}?",
            "How far is {place} from {place2}?",
            "What year was the {building} in {place} built?",
            "How many pages does {title} have?",
            "When was the {building} in {place} opened?",
            "How much did {person} pay for the {device}?",
        ),
    },
    "test": {
        "abbreviation": (
            "What is {acr} an acronym for?",
            "Expand the initials {acr}.",
            "What is the expansion of {acr} in {field}?",
            "The letters {acr} are used for what phrase?",
            "Which words do the letters {acr} represent?",
            "In {field}, what is meant by {acr}?",
            "Decode the abbreviation {acr}.",
        ),
        "description": (
            "How can I {action}?",
            "What is the difference between {x} and {y}?",
            "Why is {phenomenon} more common in {season}?",
            "What does it mean to {verb_phrase}?",
            "What does it mean when {animals} fly low?",
            "Why does {phenomenon} happen at night?",
            "How can I tell {x} from {y}?",
        ),
        "entity": (
            "What breed of dog does {person} own?",
            "Which language is spoken in {place}?",
            "What colour is the roof of the {building} in {place}?",
            "What dish is {place} famous for?",
            "What tree grows in the main square of {place}?",
            "Which sport does {person} coach?",
            "What flower is the symbol of {place}?",
        ),
        "human": (
            "Who founded the {org} of {place}?",
            "Which composer wrote {title}?",
            "Who was the captain of the {ship}?",
            "What is the name of the architect who designed the {building} in {place}?",
            "Who taught {person} to paint?",
            "Which composer arranged the anthem of {place}?",
            "Who is the patron of the {org} of {place}?",
        ),
        "location": (
            "Which river flows through {place}?",
            "Where can one find the {landmark}?",
            "In what state was {person} born?",
            "What is the capital of {place}?",
            "Where did the {ship} sink?",
            "In what state is the {building} of {place}?",
            "Which river runs past the {landmark}?",
        ),
        "numeric": (
            "How old is {person}?",
            "What is the population of {place}?",
            "How long does it take to {action}?",
            "How much does a {device} cost?",
            "How long is the {landmark}?",
            "How many people live in {place}?",
            "How much rain falls in {place} in {season}?",
        ),
    },
}


def _p(text: str) -> tuple[str, ...]:
    return tuple(text.split("|"))


_SHARED = {
    "device": _p(
        "pressure cooker|sextant|barometer|metronome|dishwasher|telescope|sewing machine|thermostat|loom|hearing aid|slide rule|gyroscope"
    ),
    "animals": _p("geese|salmon|monarch butterflies|reindeer|whales|starlings|frogs|bats"),
    "season": _p("spring|summer|autumn|winter|the rainy season|the dry months"),
    "word": _p("serendipity|quixotic|ephemeral|halcyon|ubiquitous|laconic|petrichor|sonder"),
    "phenomenon": _p(
        "morning fog|sea foam|static electricity|hiccups|rust on iron|northern lights|thunder|low tide|frost on windows|jet lag"
    ),
    "event": _p("chess olympiad|jazz festival|sailing regatta|film week|science fair|marathon"),
    "things": _p("bridges|museums|public libraries|bakeries|lighthouses|parks|schools"),
    "building": _p("town hall|railway station|cathedral|opera house|old mill|clock tower"),
    "field": _p("medicine|aviation|computing|finance|chemistry|shipping"),
    "action": _p(
        "fix a squeaky door|grow tomatoes indoors|clean a cast iron pan|tune a guitar|remove a wine stain|sharpen a kitchen knife|learn to juggle"
    ),
    "x": _p("weather|a lake|jam|a violin|a comet|baking soda"),
    "y": _p("climate|a pond|jelly|a viola|an asteroid|baking powder"),
    "verb_phrase": _p(
        "burn the midnight oil|break the ice|bite the bullet|spill the beans|go the extra mile|hit the sack"
    ),
    "org": _p("rowing club|choir|botanical society|chess club|fire brigade|orchestra"),
    "ship": _p("Albatross|Northern Star|Gull|Resolute|Morning Glory|Kittiwake"),
    "landmark": _p("Glass Pavilion|Salt Caves|Copper Steps|Whispering Arch|Lantern Bridge"),
}
_SPLIT_POOLS = {
    "train": {
        "first": split_words(FIRST_NAMES, "train"),
        "last": split_words(SURNAMES, "train"),
        "place": _p(
            "Port Avalen|Kestrova|Marrowby|Lake Tessin|Ostrava Vale|Brindlemoor|Caldera Bay|Fennwick|Santa Olvera|Rookhaven"
        ),
        "title": _p(
            "The Silent Harbor|Winter Orchard|The Glass Road|Seven Lanterns|A Map of Salt|The Copper Garden|Evening Tide"
        ),
    },
    "test": {
        "first": split_words(FIRST_NAMES, "test"),
        "last": split_words(SURNAMES, "test"),
        "place": _p(
            "Veldmoor|Port Sarin|Ashcombe|Lake Orvieto|Tarnhollow|Bellmere|Quillon Bay|Harrowgate Vale|San Lucero|Wrenfield"
        ),
        "title": _p(
            "The Paper Lighthouse|Autumn Ledger|The Iron Meadow|Nine Bells|A Song of Chalk|The Amber Room|Morning Ferry"
        ),
    },
}


def _fill(template: str, pools: dict, rng: random.Random) -> str:
    values: dict[str, str] = {}
    if "{acr}" in template:
        values["acr"] = "".join(rng.choices("ABCDEFGHIJKLMNOPRSTUVW", k=rng.randint(2, 4)))
    if "{person}" in template:
        values["person"] = f"{rng.choice(pools['first'])} {rng.choice(pools['last'])}"
    if "{place}" in template:
        values["place"] = rng.choice(pools["place"])
    if "{place2}" in template:
        values["place2"] = rng.choice([p for p in pools["place"] if p != values["place"]])
    if "{title}" in template:
        values["title"] = rng.choice(pools["title"])
    if "{year}" in template:
        values["year"] = str(rng.randint(1950, 2021))
    for name, options in _SHARED.items():
        if "{" + name + "}" in template:
            values[name] = rng.choice(options)
    return template.format(**values)


@functools.cache
def format_date(day: int) -> str:
    """The date `day` days after START_DATE, as in the lines: Mar 03, 2023."""
    return (START_DATE + dt.timedelta(days=day)).strftime("%b %d, %Y")


@functools.cache
def _year(day: int) -> int:
    return (START_DATE + dt.timedelta(days=day)).year


def items(split: str, seed: int, budget: int, family: str = FAMILY) -> Iterator[tuple[int, int, str, str]]:
    """Endless (day, user, label, line) items for one task; the label mix and the user pool
    (about one user per 6 items of the `budget`) are drawn from the task's seed."""
    rng = rng_for(family, split, seed, "items")
    weights = [rng.uniform(0.4, 2.0) for _ in LABELS]
    n_users = max(8, budget // (90 * 6))
    users = rng.sample(range(10_000, 100_000), min(n_users, 90_000))
    templates, pools = _TEMPLATES[split], _SPLIT_POOLS[split]
    while True:
        label = rng.choices(LABELS, weights)[0]
        day, user = rng.randrange(N_DAYS), rng.choice(users)
        text = _fill(rng.choice(templates[label]), pools, rng)
        yield day, user, label, f"Date: {format_date(day)} || User: {user} || Instance: {text}\n"


def label_question_header(split: str) -> str:
    labels = ", ".join(f"'{lab}'" for lab in LABELS)
    if split == "train":
        return (
            "The context lists instances, one per line, each with a date, a user id and a question. "
            f"Each question can be labelled as one of: {labels}, by the kind of answer it asks for "
            "(the expansion of an abbreviation, a description or reason, a thing, a person, a place, "
            "or a number or date). The labels are not given: infer them. "
        )
    return (
        "Every line of the context is one instance (date, user id, question). Classify each "
        f"question by the type of answer it seeks, using exactly these labels: {labels} "
        "(abbreviation expansion / explanation or definition / object or other entity / person / "
        "place / number, amount or date). You must infer the labels yourself. "
    )


_QUERY_TEXT = {
    "train": {
        "count": "How many instances should be labelled '{label}'?",
        "count_year": "How many instances dated in {year} should be labelled '{label}'?",
        "most_frequent": "Which label is the most common among the instances?",
        "least_frequent": "Which label is the least common among the instances?",
        "compare_dates": "Are there more '{label}' instances dated before {date} than on or after it? "
        "Answer yes or no.",
    },
    "test": {
        "count": "What is the number of instances whose label is '{label}'?",
        "count_year": "In the year {year}, how many instances carry the label '{label}'?",
        "most_frequent": "Which label occurs most often?",
        "least_frequent": "Which label occurs least often?",
        "compare_dates": "Do instances labelled '{label}' occur more often before {date} than on or "
        "after {date}? Reply yes or no.",
    },
}


def generate(
    seed: int,
    length_tokens: int,
    split: str = "train",
    *,
    query: str | None = None,
    out_dir: str | None = None,
    file_threshold_tokens: int | None = None,
    counter: TokenCounter | None = None,
) -> Task:
    """One OOLONG-like task; `query` is one of `QUERIES` (default: random)."""
    check_split(split)
    knobs = {"query": query} if query else {}
    rng = rng_for(FAMILY, split, seed, "query")
    qtype = query or rng.choice(QUERIES)
    if qtype not in QUERIES:
        raise ValueError(f"query must be one of {QUERIES}, got {qtype!r}")
    label, year = rng.choice(LABELS), rng.choice((2022, 2023, 2024))
    cut = rng.randrange(N_DAYS * 3 // 10, N_DAYS * 7 // 10)

    def write(sink: Sink) -> dict[str, Any]:
        total, by_year, before, after = Counter(), Counter(), Counter(), Counter()
        for day, _user, lab, line in items(split, seed, sink.budget):
            if sink.full:
                break
            sink.add(line)
            total[lab] += 1
            by_year[_year(day), lab] += 1
            (before if day < cut else after)[lab] += 1
        return {"total": total, "by_year": by_year, "before": before, "after": after}

    tid = task_id(FAMILY, split, seed, length_tokens, knobs)
    path = output_path(tid, length_tokens, out_dir, file_threshold_tokens, ".txt")
    sized = build_sized(write, length_tokens, chars_per_token=CHARS_PER_TOKEN, counter=counter, path=path)
    st = sized.state
    counts = [st["total"][lab] for lab in LABELS]
    if qtype in ("most_frequent", "least_frequent"):
        pick = max(counts) if qtype == "most_frequent" else min(counts)
        if counts.count(pick) > 1:
            qtype = "count"  # a tie has no single answer
    date = format_date(cut)
    scorer = "numeric"
    if qtype == "count":
        answer: Any = st["total"][label]
    elif qtype == "count_year":
        answer = st["by_year"][year, label]
    elif qtype in ("most_frequent", "least_frequent"):
        answer, scorer = LABELS[counts.index(pick)], "exact"
    else:
        answer, scorer = ("yes" if st["before"][label] > st["after"][label] else "no"), "exact"
    question = label_question_header(split) + _QUERY_TEXT[split][qtype].format(
        label=label, year=year, date=date
    )
    meta = base_metadata(FAMILY, split, seed, length_tokens, sized, knobs)
    meta.update(
        query={"type": qtype, "label": label, "year": year, "date": date},
        n_items=sum(counts),
        label_counts=dict(zip(LABELS, counts, strict=True)),
    )
    return Task(tid, sized.context, question, answer, scorer, meta)

"""BrowseComp-Plus-like multi-hop questions over a corpus of documents.

BrowseComp-Plus gives the model about 1,000 web documents (6-11M tokens) and a question whose
answer needs several facts found in different documents. Here the corpus describes an
invented world: people, companies, cities and inventions, one document each, as a dict
{doc_id: text}. Facts are plain sentences inside each entity's document ("Halvorsen Dynamics
is headquartered in Braskholm."), scattered among unrelated paragraphs, and a question
chains `hops` (2-4) of them: "What is the name of the mayor of the city where the founder of
Halvorsen Dynamics was born?" needs the company's page, then the founder's, then the city's.
Names come in near-twins (same surname, same company stem, same city prefix) so that
skimming for a partial name finds the wrong page.

Every relation is a function (one founder per company, one birthplace per person, one mayor
per city, one inventor per invention, one mentor per person, one company per founder), so
each chain has one answer, the name of the last entity (scorer "exact"). Train and test use
disjoint name pools (people's names from `words.py`: 179 given names and 175 family names
for train, 110 and 87 for test), different fact sentences and different question phrasings. The
corpus size follows the length (`n_docs`, default about one document per 1,500 tokens, 12 to 1,000);
big corpora are streamed into a JSON file (`ContextFile(kind="json")`).
"""

from __future__ import annotations

import random

from rlm_env.tasks.base import Task
from rlm_env.tasks.filler import generated_paragraph
from rlm_env.tasks.sizing import Sink, base_metadata, build_sized, check_split, output_path, rng_for, task_id
from rlm_env.tasks.tokens import TokenCounter
from rlm_env.tasks.words import FIRST_NAMES, SURNAMES, split_words

FAMILY = "multihop"
SCORER = "exact"
CHARS_PER_TOKEN = 5.2
"""Measured with the SmolLM2 tokenizer on these documents (used only without a tokenizer)."""

# relation: (source type, target type)
RELATIONS = {
    "inventor": ("invention", "person"),
    "birth_city": ("person", "city"),
    "mentor": ("person", "person"),
    "founded": ("person", "company"),
    "founder": ("company", "person"),
    "hq": ("company", "city"),
    "mayor": ("city", "person"),
}
_W = str.split
_NAMES = {
    "train": {
        "first": list(split_words(FIRST_NAMES, "train")),
        "last": list(split_words(SURNAMES, "train")),
        "stem": _W(
            "Halvorsen Aurelian Brightwater Corvid Dunmore Everline Falconer Granite Hollis Ironbark "
            "Juniper Kestrel Lumen Meridian Northwind Obsidian Pinecrest Quarry Redfern Solace "
            "Tidewater Umber Vantage Willow Yarrow"
        ),
        "suffix": _W("Dynamics Holdings Works Labs Industries Partners Systems Foundry Logistics Textiles"),
        "prefix": _W(
            "Brask Eld Fjor Gal Hol Kar Lun Mar Nor Ost Ran Sel Tor Ulv Vid Ask Bel Dal Fen Grim "
            "Hav Ing Jar Kil Lov"
        ),
        "place_end": _W("holm vik stad berg dal ness mouth ford haven wick by minster"),
        "inv_adj": _W(
            "Zephyr Cobalt Lyric Ember Quartz Nimbus Solstice Tandem Vesper Willowby Aster Borealis "
            "Cinder Delta Echo Fable Gossamer Harbor Iris Jubilee"
        ),
        "inv_noun": _W(
            "Loom Lens Engine Press Compass Kiln Pump Lantern Valve Clock Sextant Drill Spindle Oven Rudder"
        ),
    },
    "test": {
        "first": list(split_words(FIRST_NAMES, "test")),
        "last": list(split_words(SURNAMES, "test")),
        "stem": _W(
            "Ashgrove Bellhaven Cinderfield Driftwood Emberlight Foxglove Goldcrest Harrowgate Inkwell "
            "Jadestone Kingsmere Larkspur Moonridge Nettlebed Oakhurst Pebblebrook Quillfeather "
            "Ravenmoor Silverbirch Thornbury Upland Vervain Whitlock Yewdale Zinnia"
        ),
        "suffix": _W(
            "Group Collective Ventures Instruments Mills Consortium Networks Atelier Shipping Chemicals"
        ),
        "prefix": _W(
            "Aber Bryn Caer Dun Elm Glen Inver Kirk Lang Mor Pen Ros Strath Tre Wester Ard Bal Cul "
            "Drum Fal Gar Hal Kin Lis Rath"
        ),
        "place_end": _W("ton field more bridge caster port well combe ley shaw gate mere"),
        "inv_adj": _W(
            "Aurora Basalt Calypso Dynamo Equinox Fathom Galena Halcyon Indigo Jasper Kelvin Lumina "
            "Meteor Nova Onyx Prism Quasar Radiant Sable Talon"
        ),
        "inv_noun": _W(
            "Furnace Gauge Winch Prism Turbine Beacon Chisel Bellows Anvil Capstan Sieve Reel Bobbin "
            "Kettle Piston"
        ),
    },
}
_FACTS = {
    "train": {
        "birth_city": ("{s} was born in {o}.", "{o} is the city where {s} was born."),
        "mentor": ("{s} was mentored by {o}.", "As a young apprentice, {s} was mentored by {o}."),
        "founded": ("{s} founded {o}.", "Years ago, {s} founded {o}."),
        "founder": ("{s} was founded by {o}.", "{o} founded {s}."),
        "hq": ("{s} is headquartered in {o}.", "The headquarters of {s} are in {o}."),
        "mayor": ("The mayor of {s} is {o}.", "{o} serves as the mayor of {s}."),
        "inventor": ("The {s} was invented by {o}.", "{o} invented the {s}."),
    },
    "test": {
        "birth_city": ("{s} is a native of {o}.", "The birthplace of {s} is {o}."),
        "mentor": ("{s} trained under {o}.", "{o} was the mentor of {s}."),
        "founded": ("{s} started {o}.", "{s} is the founder of {o}."),
        "founder": ("{s} was started by {o}.", "The founder of {s} is {o}."),
        "hq": ("{s} has its head office in {o}.", "{s} is based in {o}."),
        "mayor": ("{s} is governed by mayor {o}.", "{o} is the current mayor of {s}."),
        "inventor": ("The {s} was created by {o}.", "{o} is credited with creating the {s}."),
    },
}
_PHRASES: dict[str, dict[str, tuple[str, ...]]] = {
    "train": {
        "inventor": (
            "the inventor of the {x}",
            "the one who came up with the {x}",
            "whoever designed the {x}",
        ),
        "birth_city": ("the city where {x} was born", "the home town of {x}", "the city of birth of {x}"),
        "mentor": ("the mentor of {x}", "the teacher who mentored {x}", "the person who taught {x}"),
        "founded": ("the company founded by {x}", "the business set up by {x}", "the company created by {x}"),
        "founder": ("the founder of {x}", "the person who founded {x}", "whoever set up {x}"),
        "hq": (
            "the city where {x} is headquartered",
            "the headquarters city of {x}",
            "the city that hosts the headquarters of {x}",
        ),
        "mayor": (
            "the mayor of {x}",
            "the person who is mayor of {x}",
            "whoever holds the office of mayor in {x}",
        ),
        "q": (
            "What is the name of {x}? Answer with the name only.",
            "Who or what is {x}? Reply with just the name.",
            "Find {x}. Answer with the name only.",
        ),
    },
    "test": {
        "inventor": (
            "the person who invented the {x}",
            "the individual credited with the {x}",
            "the person behind the {x}",
        ),
        "birth_city": ("the birthplace of {x}", "the town of origin of {x}", "the place of birth of {x}"),
        "mentor": (
            "the person who mentored {x}",
            "the mentor that trained {x}",
            "the guide who trained {x}",
        ),
        "founded": (
            "the firm that {x} started",
            "the enterprise launched by {x}",
            "the firm established by {x}",
        ),
        "founder": (
            "the person who started {x}",
            "the one who established {x}",
            "the person behind the founding of {x}",
        ),
        "hq": (
            "the home city of the head office of {x}",
            "the city holding the head office of {x}",
            "the base city of {x}",
        ),
        "mayor": (
            "the person serving as mayor of {x}",
            "the current mayor governing {x}",
            "the official acting as mayor of {x}",
        ),
        "q": (
            "Name {x}. Give only the name.",
            "Identify {x}. Reply with the name alone.",
            "Which name belongs to {x}? Give the name only.",
        ),
    },
}
"""Question phrasings per relation (nested once per hop) and for the question itself; disjoint
between splits, and (but for the original "the firm that {x} started") ending in `{x}` so that
nested descriptions stay readable. The metadata's `question_templates` lists the index used at each hop, then q's."""


def question_phrases(split: str) -> dict[str, tuple[str, ...]]:
    """The question phrasings of one split: relation -> templates with `{x}`, and "q"."""
    return _PHRASES[check_split(split)]


_NOISE = {
    "person": (
        "{n} enjoys long walks along the coast.",
        "{n} has given several public lectures on local history.",
        "Friends describe {n} as patient and curious.",
        "{n} collects old maps and postcards.",
    ),
    "company": (
        "{n} employs several hundred people.",
        "{n} publishes a yearly report on its projects.",
        "Customers praise {n} for reliable service.",
        "{n} sponsors a youth football team.",
    ),
    "city": (
        "{n} is known for its narrow streets and colourful markets.",
        "Tourists visit {n} every summer.",
        "{n} has a busy harbour and an old stone bridge.",
        "The winters in {n} are long and mild.",
    ),
    "invention": (
        "The {n} is used in workshops around the world.",
        "Early models of the {n} were heavy.",
        "The {n} appears in many museum collections.",
        "Repairing the {n} requires special tools.",
    ),
}


_GROUPS = {  # type: (outer pool, inner pool, format): names sharing the outer word are twins
    "person": ("last", "first", "{i} {o}"),
    "company": ("stem", "suffix", "{o} {i}"),
    "city": ("prefix", "place_end", "{o}{i}"),
    "invention": ("inv_adj", "inv_noun", "{o} {i}"),
}


def _names(pools: dict, rng: random.Random, counts: dict[str, int]) -> dict[str, list[str]]:
    """Unique names per type, made in near-twin pairs (same surname, stem, prefix, adjective)."""
    out = {}
    for kind, n in counts.items():
        outer_pool, inner_pool, fmt = _GROUPS[kind]
        outers = rng.sample(pools[outer_pool], len(pools[outer_pool]))
        inners = {o: rng.sample(pools[inner_pool], len(pools[inner_pool])) for o in outers}
        names: list[str] = []
        for r in range(0, len(pools[inner_pool]) - 1, 2):
            for o in outers:
                names += [fmt.format(o=o, i=i) for i in inners[o][r : r + 2]]
            if len(names) >= n:
                break
        out[kind] = names[:n]
        rng.shuffle(out[kind])
    return out


def _world(
    rng: random.Random, pools: dict, n_docs: int
) -> tuple[dict[str, list[str]], dict[tuple[str, str], str]]:
    n_inv, n_comp, n_city = max(1, n_docs // 8), max(2, n_docs // 5), max(2, n_docs // 5)
    ents = _names(
        pools,
        rng,
        {
            "invention": n_inv,
            "company": n_comp,
            "city": n_city,
            "person": max(n_comp + 2, n_docs - n_inv - n_comp - n_city),
        },
    )
    people, cities = ents["person"], ents["city"]
    facts: dict[tuple[str, str], str] = {}
    for i, p in enumerate(people):
        facts[p, "birth_city"] = rng.choice(cities)
        facts[p, "mentor"] = rng.choice(people[:i] + people[i + 1 :])
    for co, founder in zip(ents["company"], rng.sample(people, len(ents["company"])), strict=True):
        facts[co, "founder"], facts[founder, "founded"] = founder, co
        facts[co, "hq"] = rng.choice(cities)
    for c in cities:
        facts[c, "mayor"] = rng.choice(people)
    for inv in ents["invention"]:
        facts[inv, "inventor"] = rng.choice(people)
    return ents, facts


def _chain(rng: random.Random, ents: dict, facts: dict, hops: int) -> tuple[str, list[str], list[str]]:
    """A start entity and `hops` relations visiting distinct entities (random walk, retried)."""
    everyone = [e for names in ents.values() for e in names]
    for _ in range(10_000):
        path = [rng.choice(everyone)]
        rels: list[str] = []
        while len(rels) < hops:
            options = [r for r in RELATIONS if (path[-1], r) in facts and facts[path[-1], r] not in path]
            if not options:
                break
            rel = rng.choice(options)
            rels.append(rel)
            path.append(facts[path[-1], rel])
        if len(rels) == hops:
            return path[0], rels, path
    raise ValueError(f"could not build a {hops}-hop chain; use more documents")


def generate(
    seed: int,
    length_tokens: int,
    split: str = "train",
    *,
    hops: int | None = None,
    n_docs: int | None = None,
    out_dir: str | None = None,
    file_threshold_tokens: int | None = None,
    counter: TokenCounter | None = None,
) -> Task:
    """One multi-hop task over a corpus of about `length_tokens` tokens (sum of documents)."""
    check_split(split)
    knobs = {k: v for k, v in dict(hops=hops, n_docs=n_docs).items() if v is not None}
    rng = rng_for(FAMILY, split, seed, "world")
    hops = hops or rng.randint(2, 4)
    if not 1 <= hops <= 6:
        raise ValueError(f"hops must be within 1..6, got {hops}")
    n_docs = n_docs or min(1000, max(12, length_tokens // 1500))
    ents, facts = _world(rng, _NAMES[split], n_docs)
    start, rels, path = _chain(rng, ents, facts, hops)
    kind_of = {e: k for k, names in ents.items() for e in names}
    docs = [(e, k) for k, names in ents.items() for e in names]
    rng.shuffle(docs)
    fact_text = _FACTS[split]

    def write(sink: Sink) -> None:
        per_doc = sink.budget // len(docs)
        drng = rng_for(FAMILY, split, seed, "docs")
        for i, (name, kind) in enumerate(docs):
            lines = [
                drng.choice(fact_text[r]).format(s=name, o=facts[name, r])
                for r in RELATIONS
                if (name, r) in facts
            ]
            body, size = [], len(name)
            while size < per_doc or not body:
                para = drng.choice(_NOISE[kind]).format(n=name) + " " + generated_paragraph(drng)
                body.append(para)
                size += len(para) + 2
            for line in lines:
                body.insert(drng.randrange(len(body) + 1), line)
            sink.add(f"{name}\n\n" + "\n\n".join(body) + "\n", key=f"doc-{i:04d}")

    tid = task_id(FAMILY, split, seed, length_tokens, knobs)
    path_out = output_path(tid, length_tokens, out_dir, file_threshold_tokens, ".json")
    sized = build_sized(
        write, length_tokens, chars_per_token=CHARS_PER_TOKEN, counter=counter, kind="dict", path=path_out
    )
    phrases = _PHRASES[split]
    qrng = rng_for(FAMILY, split, seed, "question")
    picks = [qrng.randrange(len(phrases[rel])) for rel in rels] + [qrng.randrange(len(phrases["q"]))]
    desc = start
    for rel, pick in zip(rels, picks, strict=False):
        desc = phrases[rel][pick].format(x=desc)
    meta = base_metadata(FAMILY, split, seed, length_tokens, sized, knobs)
    meta.update(
        hops=hops,
        n_docs=len(docs),
        start=start,
        relations=rels,
        chain=path,
        chain_types=[kind_of[e] for e in path],
        question_templates=picks,
        length_of="sum of document texts",
    )
    return Task(tid, sized.context, phrases["q"][picks[-1]].format(x=desc), path[-1], SCORER, meta)

"""Expert scripts for multi-hop documents: follow the question's chain of relations page by page.

`context` is a dict {doc_id: text} whose texts open with the entity's name. The expert does
what a capable RLM does here, in code: probe the dict (type, size, one document's head), index
the documents by title, find the starting entity as the longest title named in the question,
then for each hop (innermost relation first) read the current entity's page, keep the sentences
that name the entity and carry the relation's cue words ("born", "mayor", "founded"), and take
the one other title in them as the next entity; it prints every step, checks that each hop
found exactly one name, and `FINAL`s the last one.

The decomposition of the question into hops is the part a model must learn from reading; the
expert writes it into the code as a plan, e.g. `[("founder", ["founded", "started", "founder"]),
("birth city", ["born", "native of", "birthplace"])]`. Two strategies, with varied names and
wording: `hop-loop` (all hops in one cell, then verify and answer) and `hop-by-hop` (one cell
per hop, each reading the printed evidence before moving on).
"""

from __future__ import annotations

import random
import re

from rlm_env.tasks.multihop import question_phrases
from training.demos.policy import Script

FAMILY = "multihop"
STRATEGIES = ("hop-loop", "hop-by-hop")

CUES = {
    "birth_city": ("born", "native of", "birthplace"),
    "mentor": ("mentor", "trained under"),
    "founded": ("founded", "started", "founder"),
    "founder": ("founded", "started", "founder"),
    "hq": ("headquarter", "head office", "based in"),
    "mayor": ("mayor",),
    "inventor": ("invented", "created", "creating"),
}
"""Words that mark a relation's fact sentence (the reader's knowledge of English, not the
generator's templates)."""
_LABEL = {
    "birth_city": "birth city",
    "mentor": "mentor",
    "founded": "company founded",
    "founder": "founder",
    "hq": "headquarters",
    "mayor": "mayor",
    "inventor": "inventor",
}


def parse_question(question: str) -> tuple[list[str], str]:
    """(relations innermost first, the description's innermost remainder: the start's name).

    Reads the nested description the way a reader would, outermost phrase first."""
    patterns: list[tuple[str, re.Pattern]] = []
    for split in ("train", "test"):
        phrases = question_phrases(split)
        for rel, templates in phrases.items():
            for t in templates:
                head, _, tail = t.partition("{x}")
                patterns.append((rel, re.compile(re.escape(head) + r"(.+)" + re.escape(tail) + r"$", re.S)))
    patterns.sort(key=lambda p: -len(p[1].pattern))
    desc = question.strip()
    for rel, pat in patterns:  # the question template itself
        if rel == "q" and (m := pat.match(desc)):
            desc = m.group(1)
            break
    rels: list[str] = []
    while True:
        for rel, pat in patterns:
            if rel != "q" and (m := pat.match(desc)):
                rels.append(rel)
                desc = m.group(1)
                break
        else:
            return rels[::-1], desc


def _plan_code(rels: list[str]) -> str:
    rows = ",\n    ".join(f"({_LABEL[r]!r}, {list(CUES[r])!r})" for r in rels)
    return f"plan = [  # innermost relation first\n    {rows},\n]"


def _fence(prose: str, code: str) -> str:
    return f"{prose}\n```repl\n{code.strip()}\n```"


_INDEX = """titles = {{text.split("\\n", 1)[0]: doc_id for doc_id, text in context.items()}}
named = [t for t in titles if re.search(r"\\b" + re.escape(t) + r"\\b", {q})]
{start} = max(named, key=len)  # the entity the question starts from
print(len(titles), "titles; start:", {start}, "->", titles[{start}])"""

_STEP = '''def step(entity, cues):
    """The names on entity's page that share a sentence with it and with a cue word."""
    page = context[titles[entity]]
    found = set()
    for sentence in re.split(r"(?<=\\.)\\s+", page):
        if entity in sentence and any(c in sentence.lower() for c in cues):
            found |= {t for t in titles if t != entity and re.search(r"\\b" + re.escape(t) + r"\\b", sentence)}
            print("  evidence:", sentence.strip()[:200])
    return sorted(found)'''


def _probe(rng: random.Random) -> str:
    prose = rng.choice(
        [
            "The context is a collection of documents. Let me look at its shape first.",
            "First, probe `context`: its type, how many documents, and how one begins.",
        ]
    )
    code = """print(type(context).__name__, len(context))
first = next(iter(context))
print(first, repr(context[first][:200]))"""
    return _fence(prose, code)


def _question_literal(question: str, rng: random.Random, start_name: str) -> tuple[str, str]:
    """(code that names the question or the start, the expression to search titles in)."""
    if rng.random() < 0.6:
        return f"question = {question!r}", "question"
    return f"hint = {start_name!r}  # the name the question starts from", "hint"


def _hop_loop(question: str, rels: list[str], start_name: str, rng: random.Random) -> Script:
    ent = rng.choice(["entity", "current", "node"])
    chain = rng.choice(["chain", "path", "visited"])
    observation = yield _probe(rng)
    literal, q = _question_literal(question, rng, start_name)
    prose = rng.choice(
        [
            "Each document is one entity, titled on its first line. I index them by title, find where the "
            "question starts, and follow its relations from the inside out.",
            "Plan: the question nests relations; the innermost one applies to the named entity. I follow them "
            "one page at a time with a cue-word search.",
        ]
    )
    code = f"""import re
{literal}
{_INDEX.format(q=q, start=ent)}
{_plan_code(rels)}
{_STEP}

{chain} = [{ent}]
for label, cues in plan:
    names = step({chain}[-1], cues)
    print(label, "of", {chain}[-1], "->", names)
    if len(names) != 1:
        break
    {chain}.append(names[0])
print("chain:", {chain})"""
    observation = yield _fence(prose, code)
    prose = rng.choice(
        [
            "Every hop found exactly one name. The answer is the last entity of the chain.",
            "The chain is complete, one name per hop. Check its length and answer.",
        ]
    )
    code = f"""assert len({chain}) == len(plan) + 1
answer = {chain}[-1]
FINAL(answer)"""
    if "chain:" in observation and "Error" not in observation:
        yield _fence(prose, code)
    yield _fence(
        "A hop did not resolve to one name; I answer with the furthest entity reached.", f"FINAL({chain}[-1])"
    )


def _hop_by_hop(question: str, rels: list[str], start_name: str, rng: random.Random) -> Script:
    ent = rng.choice(["entity", "current", "who"])
    literal, q = _question_literal(question, rng, start_name)
    prose = rng.choice(
        [
            "Let me index the documents by their titles and find the entity the question starts from.",
            "The documents begin with their titles. Index them, then locate the starting name.",
        ]
    )
    code = f"""import re
print(type(context).__name__, len(context))
{literal}
{_INDEX.format(q=q, start=ent)}
{_STEP}"""
    yield _fence(prose, code)
    for i, rel in enumerate(rels):
        prose = f"Hop {i + 1} of {len(rels)}: the {_LABEL[rel]} of the current entity. " + rng.choice(
            ["I read its page for that fact.", "Search its page for the cue words."]
        )
        code = f"""names = step({ent}, {list(CUES[rel])!r})
print("{_LABEL[rel]}:", names)
{ent} = names[0] if len(names) == 1 else {ent}"""
        yield _fence(prose, code)
    yield _fence(
        rng.choice(
            ["That was the last hop; it names the answer.", "All hops done. Answer with the last name."]
        ),
        f"print({ent})\nFINAL({ent})",
    )


_SCRIPTS = {"hop-loop": _hop_loop, "hop-by-hop": _hop_by_hop}


def script(episode_id: str, question: str, strategy: str | None = None) -> tuple[str, Script]:
    """The strategy and script for one episode (styled by a hash of the episode id)."""
    rng = random.Random(f"rlm-env/demos/{FAMILY}/{episode_id}")
    strategy = strategy or rng.choice(STRATEGIES)
    rels, start_name = parse_question(question)
    return strategy, _SCRIPTS[strategy](question, rels, start_name, rng)

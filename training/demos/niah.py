"""Expert scripts for S-NIAH: find the one sentence about the question's key and extract its value.

What the expert does is what a capable RLM root does on this family, written as REPL code:
probe `context` (type, length, a slice), take the key ("humble-tulip") from the question (with a
regex over the question string, or copied), search with `re` or `str.find` with word boundaries
(so the distractor "humble-tulip-2" does not match), print the hits, extract the value from the
hit's line by its shape (seven digits, a code like K7-QX92, a quoted three-word phrase) rather
than copying it, verify it, and `FINAL` it. When a search comes back empty it broadens (ignore
case, allow a space between the words, then each word alone) instead of guessing.

Five strategies, each with varied wording, variable names and window sizes so a small model
learns the skill rather than one string:

- `regex-window`: probe and search in one cell, then extract from the hits' lines;
- `paragraphs`: probe first, then split into paragraphs and filter them, then extract;
- `phrase-first`: search the question's own wording first; it is usually absent (needles are
  phrased differently), which the expert then demonstrates recovering from;
- `shape-first`: find every value-shaped string, keep those whose line names the key;
- `find-loop`: `str.find` in a loop with a hand-written boundary check, `str.split` extraction.

The expert reads only what a model reads: the question in the prompt and the REPL's output.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

from training.demos.policy import Script

FAMILY = "niah"
STRATEGIES = ("regex-window", "paragraphs", "phrase-first", "shape-first", "find-loop")

VALUE_PATTERNS = {
    "number": (r"\b(\d{7})\b", r"(?<!\d)(\d{7})(?!\d)"),
    "code": (r"\b([A-Z]\d-[A-Z]{2}\d{2})\b", r"([A-Z][0-9]-[A-Z][A-Z][0-9][0-9])"),
    "phrase": (r'"([a-z]+ [a-z]+ [a-z]+)"', r'"([^"\n]+)"'),
}
"""Two regexes per value kind (group 1 is the value), for variety."""

ANY_VALUE_PATTERN = r'((?<!\d)\d{7}(?!\d)|\b[A-Z]\d-[A-Z]{2}\d{2}\b|(?<=")[a-z]+ [a-z]+ [a-z]+(?="))'
"""Every value shape in one regex (group 1 is the value, a phrase without its quotes). Within the
line that names the key it finds the value whatever the question calls it; on 160 train and test
tasks at 8K and 30 at 128K its first match in the key's line was the answer every time."""

_SHAPE_WORDS = {"number": "a seven-digit number", "code": "a code like A1-BC23", "phrase": "a quoted phrase"}


@dataclass
class _Style:
    """Names and wording one episode's script uses (drawn once per episode)."""

    key: str
    hits: str
    snips: str
    answer: str
    window: int
    probe: int
    key_from_question: bool
    value_re: str


def _kind(question: str) -> str:
    q = question.lower()
    if "number only" in q:
        return "number"
    if "code only" in q:
        return "code"
    if "phrase only" in q:
        return "phrase"
    for kind, words in (("phrase", ("phrase", "password", "watchword")), ("code", ("code", "tag"))):
        if any(w in q for w in words):
            return kind
    return "number"


def _style(rng: random.Random, kind: str) -> _Style:
    return _Style(
        key=rng.choice(["key", "name", "target", "needle_key"]),
        hits=rng.choice(["hits", "positions", "found", "where"]),
        snips=rng.choice(["lines", "snippets", "matches", "candidates_text"]),
        answer=rng.choice(["answer", "value", "result", "best"]),
        window=rng.choice([120, 150, 200, 250]),
        probe=rng.choice([150, 200, 300]),
        key_from_question=rng.random() < 0.6,
        value_re=rng.choice(VALUE_PATTERNS[kind]),
    )


def _fence(prose: str, code: str) -> str:
    return f"{prose}\n```repl\n{code.strip()}\n```"


def _key_code(s: _Style, question: str, key: str) -> str:
    if s.key_from_question:
        return (
            f"question = {question!r}\n"
            f'{s.key} = re.search(r"\\b[a-z]+-[a-z]+\\b", question).group(0)  # the name asked about'
        )
    return f"{s.key} = {key!r}"


def _probe_code(s: _Style) -> str:
    return f"print(type(context).__name__, len(context))\nprint(context[:{s.probe}])"


def _boundary(s: _Style) -> str:
    # Word boundaries that also reject the distractors "<key>-2" and "x-<key>".
    return f'pattern = r"(?<![\\w-])" + re.escape({s.key}) + r"(?![\\w-])"'


_LINE_AT = """def line_at(text, pos):
    start = text.rfind("\\n", 0, pos) + 1
    end = text.find("\\n", pos)
    return text[start:end if end != -1 else len(text)]"""


def _count(observation: str, label: str) -> int:
    m = re.search(rf"{label}: (\d+)", observation)
    return int(m.group(1)) if m else 0


def _extract_from_hits(s: _Style, rng: random.Random) -> str:
    """A cell turning hit positions into lines, extracting the value by its shape, verifying it."""
    prose = rng.choice(
        [
            "Found it. Now I extract the value from the line around the hit, by its shape, and check it.",
            "There is a hit. I take the whole line it sits in and pull the value out with a regex.",
            "The name occurs in the text. Extract the value from that line with code, verify, answer.",
        ]
    )
    code = f"""{_LINE_AT}

{s.snips} = [line_at(context, pos) for pos in {s.hits}]
pairs = [(m.group(1), line) for line in {s.snips} for m in [re.search({s.value_re!r}, line)] if m]
print({s.snips})
print("values:", [v for v, _ in pairs])
if pairs:
    {s.answer}, line = pairs[0]
    assert {s.answer} in line and {s.key} in line  # verify before answering
    FINAL({s.answer})"""
    return _fence(prose, code)


def _extract_from_snips(s: _Style, rng: random.Random) -> str:
    """Like `_extract_from_hits`, for a list of text pieces already filtered by the key."""
    prose = rng.choice(
        [
            "One paragraph mentions the name. Extract the value from it with a regex and answer.",
            "Now pull the value out of the matching text by its shape, check it, and answer.",
        ]
    )
    code = f"""values = [m.group(1) for p in {s.snips} for m in [re.search({s.value_re!r}, p)] if m]
print("values:", values)
{s.answer} = values[0]
assert {s.answer} in {s.snips}[0]  # the value comes from the text that names the key
FINAL({s.answer})"""
    return _fence(prose, code)


def _broaden(s: _Style, rng: random.Random) -> Script:
    """Empty search: ignore case and allow any separator; then each word alone. Ends in FINAL."""
    prose = rng.choice(
        [
            "No exact hit. The name may be written differently: ignore case and allow a space between its words.",
            "Nothing found. Broaden the search: case-insensitive, and the two words may be split by a space.",
        ]
    )
    code = f"""first, second = {s.key}.split("-")[:2]
loose = re.compile(re.escape(first) + r"[\\s_-]*" + re.escape(second), re.I)
{s.hits} = [m.start() for m in loose.finditer(context)]
print("loose hits:", len({s.hits}))
for pos in {s.hits}[:3]:
    print(repr(context[max(0, pos - {s.window}):pos + {s.window}]))"""
    observation = yield _fence(prose, code)
    if _count(observation, "loose hits") == 0:
        prose = rng.choice(
            [
                "Still nothing. Search for each word on its own and keep lines that contain both.",
                "Still empty. Look for the two words separately and keep the lines holding both.",
            ]
        )
        code = f"""{_LINE_AT}

{s.hits} = []
for m in re.finditer(re.escape(first), context, re.I):
    line = line_at(context, m.start())
    if second.lower() in line.lower():
        {s.hits}.append(m.start())
print("word hits:", len({s.hits}))
for pos in {s.hits}[:3]:
    print(repr(line_at(context, pos)))"""
        observation = yield _fence(prose, code)
        if _count(observation, "word hits") == 0:
            yield _fence(
                "The name is not in the text in any form I can find; I answer that I could not find it.",
                'FINAL("not found")',
            )
            return
    yield _extract_loose(s, rng)


def _extract_loose(s: _Style, rng: random.Random) -> str:
    prose = "Extract the value from the first matching line by its shape, verify and answer."
    code = f"""{_LINE_AT}

{s.snips} = [line_at(context, pos) for pos in {s.hits}]
values = [m.group(1) for line in {s.snips} for m in [re.search({s.value_re!r}, line)] if m]
print("values:", values)
{s.answer} = values[0]
assert {s.answer} in {s.snips}[0]
FINAL({s.answer})"""
    return _fence(prose, code)


def _after_search(s: _Style, rng: random.Random, observation: str, label: str) -> Script:
    if _count(observation, label) > 0:
        observation = yield _extract_from_hits(s, rng)
        # Only reached when the cell did not answer (no value in the hit lines): broaden.
    yield from _broaden(s, rng)


# -- the strategies ---------------------------------------------------------------------------


def _regex_window(question: str, key: str, kind: str, s: _Style, rng: random.Random) -> Script:
    prose = rng.choice(
        [
            f"The question asks about {key}. I look at the context, then search it for that exact name.",
            "I'll probe `context`, take the name from the question and search for it with a regex.",
            f"First a quick look at the data, then a word-boundary search for {key}.",
        ]
    )
    code = f"""import re
{_probe_code(s)}
{_key_code(s, question, key)}
{_boundary(s)}
{s.hits} = [m.start() for m in re.finditer(pattern, context)]
print("key:", {s.key}, "| hits:", len({s.hits}))
for pos in {s.hits}[:3]:
    print(repr(context[max(0, pos - {s.window}):pos + {s.window}]))"""
    observation = yield _fence(prose, code)
    yield from _after_search(s, rng, observation, "hits")


def _paragraphs(question: str, key: str, kind: str, s: _Style, rng: random.Random) -> Script:
    prose = rng.choice(
        [
            "Let me first see what `context` looks like.",
            "Start by probing the context: its type, its size and how it begins.",
        ]
    )
    code = f"""{_probe_code(s)}
print("paragraphs:", context.count("\\n\\n") + 1)"""
    yield _fence(prose, code)
    prose = rng.choice(
        [
            "It is plain text in paragraphs. Keep only the paragraphs that name the key exactly.",
            "Split it into paragraphs and filter them by the name (with boundaries, so look-alikes do not match).",
        ]
    )
    code = f"""import re
{_key_code(s, question, key)}
{_boundary(s)}
{s.snips} = [p for p in context.split("\\n\\n") if re.search(pattern, p)]
print("matching paragraphs:", len({s.snips}))
for p in {s.snips}[:3]:
    print(p[:300])"""
    observation = yield _fence(prose, code)
    if _count(observation, "matching paragraphs") > 0:
        yield _extract_from_snips(s, rng)
        return
    yield from _broaden(s, rng)


def _phrase_first(question: str, key: str, kind: str, s: _Style, rng: random.Random) -> Script:
    prose = rng.choice(
        [
            "Maybe the text uses the question's own words. Search for that phrase first.",
            "Try the most specific search first: the words just before the name in the question.",
        ]
    )
    code = f"""import re
{_probe_code(s)}
{_key_code(s, question, key)}
phrase = re.search(r"(?:\\w+ ){{0,2}}" + re.escape({s.key}), {"question" if s.key_from_question else repr(question)}).group(0)
{s.hits} = [m.start() for m in re.finditer(re.escape(phrase) + r"(?![\\w-])", context)]
print("phrase:", repr(phrase), "| phrase hits:", len({s.hits}))"""
    observation = yield _fence(prose, code)
    if _count(observation, "phrase hits") > 0:
        yield _extract_from_hits(s, rng)
        return
    prose = rng.choice(
        [
            "The phrase is not there: the text words it differently. Search for the name alone.",
            "No hits for the phrase. Broaden: search for just the name, with word boundaries.",
        ]
    )
    code = f"""{_boundary(s)}
{s.hits} = [m.start() for m in re.finditer(pattern, context)]
print("hits:", len({s.hits}))
for pos in {s.hits}[:3]:
    print(repr(context[max(0, pos - {s.window}):pos + {s.window}]))"""
    observation = yield _fence(prose, code)
    yield from _after_search(s, rng, observation, "hits")


def _shape_first(question: str, key: str, kind: str, s: _Style, rng: random.Random) -> Script:
    prose = rng.choice(
        [
            f"The answer is {_SHAPE_WORDS[kind]}. Find every such string, keep those whose line names the key.",
            f"I know the shape of the answer ({_SHAPE_WORDS[kind]}), so I list all candidates and filter them by the name.",
        ]
    )
    code = f"""import re
{_probe_code(s)}
{_key_code(s, question, key)}
{_boundary(s)}
{_LINE_AT}

shaped = [(m.group(1), m.start()) for m in re.finditer({s.value_re!r}, context)]
keyed = [(v, line_at(context, pos)) for v, pos in shaped if re.search(pattern, line_at(context, pos))]
print("candidates:", len(shaped), "| keyed:", len(keyed))
for v, line in keyed[:3]:
    print(v, "<-", line)"""
    observation = yield _fence(prose, code)
    if _count(observation, "keyed") > 0:
        prose = rng.choice(
            [
                "Exactly the candidate on the key's line is the answer. Verify and answer.",
                "One candidate sits on a line with the name. Check it and submit.",
            ]
        )
        code = f"""{s.answer}, line = keyed[0]
assert re.search(pattern, line) and {s.answer} in line
FINAL({s.answer})"""
        yield _fence(prose, code)
        return
    code = f"""{s.hits} = [m.start() for m in re.finditer(pattern, context)]
print("hits:", len({s.hits}))"""
    observation = yield _fence("No candidate is on a line with the name. Search for the name itself.", code)
    yield from _after_search(s, rng, observation, "hits")


def _find_loop(question: str, key: str, kind: str, s: _Style, rng: random.Random) -> Script:
    prose = rng.choice(
        [
            f"Plain string search is enough here. I look at the data and find every exact occurrence of {key}.",
            "I'll use str.find in a loop and skip look-alike names (a letter, digit or hyphen right next to it).",
        ]
    )
    code = f"""import re
{_probe_code(s)}
{_key_code(s, question, key)}
{s.hits} = []
i = context.find({s.key})
while i != -1:
    before = context[i - 1] if i > 0 else " "
    after = context[i + len({s.key}):i + len({s.key}) + 1] or " "
    if not (before.isalnum() or before == "-" or after.isalnum() or after == "-"):
        {s.hits}.append(i)
    i = context.find({s.key}, i + 1)
print("hits:", len({s.hits}))
for pos in {s.hits}[:3]:
    print(repr(context[max(0, pos - {s.window}):pos + {s.window}]))"""
    observation = yield _fence(prose, code)
    if _count(observation, "hits") == 0:
        yield from _broaden(s, rng)
        return
    prose = rng.choice(
        [
            "Take the line of the hit and pick the value out of it with string methods.",
            "Now the value: split the hit's line and keep the piece with the right shape.",
        ]
    )
    pick = {
        "number": "[w for w in words if w.isdigit() and len(w) == 7]",
        "code": '[w for w in words if re.fullmatch(r"[A-Z]\\d-[A-Z]{2}\\d{2}", w)]',
        "phrase": "line.split('\"')[1::2]",
    }[kind]
    code = f"""pos = {s.hits}[0]
start, end = context.rfind("\\n", 0, pos) + 1, context.find("\\n", pos)
line = context[start:end if end != -1 else len(context)]
words = [w.strip(".,;:()'\\"") for w in line.split()]
values = {pick}
print(line)
print("values:", values)
{s.answer} = values[0]
assert {s.answer} in line
FINAL({s.answer})"""
    yield _fence(prose, code)


_SCRIPTS = {
    "regex-window": _regex_window,
    "paragraphs": _paragraphs,
    "phrase-first": _phrase_first,
    "shape-first": _shape_first,
    "find-loop": _find_loop,
}


def _fixed_style() -> _Style:
    """One set of names for every episode (`style="fixed"`): a 135M model trained on the varied
    styles blended them (a name defined in one cell, another used in the next: NameError in 10
    of 20 held-out episodes), so the narrow stage of the recipe uses this one. It extracts with
    `ANY_VALUE_PATTERN` rather than the question kind's regex: a model trained on per-kind regexes
    picked the wrong shape for held-out wordings ("registration tag" read as a number: codes 6/24
    right at 8K-10M), and a regex that accepts every shape leaves nothing to pick."""
    return _Style(
        key="key",
        hits="hits",
        snips="lines",
        answer="answer",
        window=150,
        probe=200,
        key_from_question=True,
        value_re=ANY_VALUE_PATTERN,
    )


def script(
    episode_id: str, question: str, strategy: str | None = None, style: str = "varied"
) -> tuple[str, Script]:
    """The strategy and script for one episode: chosen and styled by a hash of the episode id
    (so reruns are identical), or the named `strategy`; `style="fixed"` keeps every variable
    name and window the same across episodes (the wording of the prose still varies)."""
    rng = random.Random(f"rlm-env/demos/{FAMILY}/{episode_id}")
    strategy = strategy or rng.choice(STRATEGIES)
    m = re.search(r"\b[a-z]+-[a-z]+\b", question)
    key = m.group(0) if m else question.split()[-1]
    kind = _kind(question)
    styled = _fixed_style() if style == "fixed" else _style(rng, kind)
    return strategy, _SCRIPTS[strategy](question, key, kind, styled, rng)

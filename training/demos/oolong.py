"""Expert scripts for OOLONG-like aggregation: label every line's question with code, then count.

`context` is text, one instance per line: `Date: Mar 03, 2023 || User: 48213 || Instance: <q>`.
Each question's label (the kind of answer it asks for) is never written down. The expert does
what a capable RLM does with thousands of short items and a weak sub-model: probe `context`
(type, length, a few lines), parse every line into (date, question) with a regex and
`datetime.strptime`, label each question with keyword and wh-word rules written into the code
("stand for" -> abbreviation; "who" -> human; "where" / "which country" -> location; "how many"
/ "when" / "what year" -> numeric; "why" / "how does" / "meaning" -> description; otherwise
entity), print the label counts, then compute the aggregate the query asks for (a count, a
count within a year, the most or least frequent label, a before/after comparison around a date)
and `FINAL` it.

The rules are a reader's knowledge of English, not the generator's templates, so they are
wrong on some questions; that is the point of measuring the expert (`rlm-env demos`). The query
(type, label, year, date) is read from the question the expert sees in the prompt, with a
tolerant parser (the last quoted label after the label list, a four-digit year, a "Mon DD, YYYY"
date, the words "most" / "least" / "before"), and written into the code as literals.

Strategies, with varied wording and variable names:

- `probe-then-count`: probe in one cell, label and count in a second, answer in a third;
- `one-pass`: probe, label and count in one cell, then answer;
- `counter-table`: probe, then build a `collections.Counter` per (year, label) and per side of
  the date, print the table, then answer from it.

Every reply fits the training recipe's 400-token root limit (the longest measured: 378 tokens,
the `one-pass` probe-and-rules cell); a longer one would raise `DemoTooLong`, never be cut.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

from rlm_env.tasks.oolong import LABELS
from training.demos.policy import Script

FAMILY = "oolong"
STRATEGIES = ("probe-then-count", "one-pass", "counter-table")

_CLASSIFY = """RULES = [  # first match wins; else "entity"
    ("abbreviation", r"stands? for|abbreviat|acronym|full form|short for|letters|initials|spell out|(?-i:[A-Z]{{2,5}}) (refer|mean)"),
    ("human", r"^(who|whose)\\b|which (person|painter|author|writer)|name of the \\w* ?(mayor|founder|king)"),
    ("location", r"^where\\b|(which|what) (city|country|state|town)"),
    ("numeric", r"^(how (many|much|far|long|old)|when)\\b|what year"),
    ("description", r"^(why|how (does|do|can))\\b|meaning|\\bmean\\b|causes?\\b|describe|explain"),
]
def {fn}(q):
    return next((lab for lab, pat in RULES if re.search(pat, q.strip(), re.I)), "entity")"""
"""A reader's rules: the wording that marks each kind of answer (first match wins)."""

_PARSE = """{rows} = []
for line in context.splitlines():
    m = re.match(r"Date: (.+?) \\|\\|.*Instance: (.*)", line)
    if m:
        {rows}.append((datetime.strptime(m.group(1), "%b %d, %Y").date(), {fn}(m.group(2))))"""


@dataclass(frozen=True)
class Query:
    """What the question asks, as the expert reads it."""

    kind: str
    label: str
    year: int
    date: str


def parse_query(question: str) -> Query:
    """The query type and its label/year/date, read from the question's last sentences."""
    # The header lists every label in quotes; the query's own label is the last quoted one after it.
    tail = question.split(f"'{LABELS[-1]}'", 1)[-1]
    labels = re.findall(r"'(" + "|".join(LABELS) + r")'", tail)
    label = labels[-1] if labels else "numeric"
    date = re.search(r"\b([A-Z][a-z]{2} \d{1,2}, \d{4})\b", tail)
    year = re.search(r"\b(19|20)\d\d\b", tail)
    low = tail.lower()
    if date and "before" in low:
        kind = "compare_dates"
    elif re.search(r"\bmost\b", low):
        kind = "most_frequent"
    elif re.search(r"\bleast\b|\bfewest\b", low):
        kind = "least_frequent"
    elif year:
        kind = "count_year"
    else:
        kind = "count"
    return Query(kind, label, int(year.group(0)) if year else 0, date.group(1) if date else "")


def _fence(prose: str, code: str) -> str:
    return f"{prose}\n```repl\n{code.strip()}\n```"


@dataclass
class _Style:
    """Names and sizes one episode's script uses (drawn once per episode, for variety)."""

    rows: str
    counts: str
    fn: str
    answer: str
    n_lines: int


def _style(rng: random.Random) -> _Style:
    return _Style(
        rows=rng.choice(["rows", "items", "parsed", "labelled"]),
        counts=rng.choice(["counts", "tally", "by_label", "freq"]),
        fn=rng.choice(["classify", "label_of", "kind_of_answer", "guess_label"]),
        answer=rng.choice(["answer", "result", "out"]),
        n_lines=rng.choice([3, 4, 5]),
    )


def _probe(s: _Style) -> str:
    return f"""print(type(context).__name__, len(context), "chars,", context.count("\\n"), "lines")
for line in context.splitlines()[:{s.n_lines}]:
    print(line)"""


def _rules_code(s: _Style) -> str:
    """Define the rules and try them on the first lines (a check a reader can eyeball)."""
    return f"""import re
{_CLASSIFY.format(fn=s.fn)}

for line in context.splitlines()[:{s.n_lines + 3}]:
    q = line.split("Instance: ", 1)[-1]
    print({s.fn}(q), "<-", q)"""


def _count_code(s: _Style) -> str:
    return f"""from collections import Counter
from datetime import datetime
{_PARSE.format(rows=s.rows, fn=s.fn)}
{s.counts} = Counter(lab for _, lab in {s.rows})
print(len({s.rows}), "instances;", dict({s.counts}))"""


def _answer_code(q: Query, s: _Style) -> str:
    r, c, a = s.rows, s.counts, s.answer
    if q.kind == "count":
        body = f"{a} = {c}[{q.label!r}]"
    elif q.kind == "count_year":
        body = f"{a} = sum(1 for d, lab in {r} if d.year == {q.year} and lab == {q.label!r})"
    elif q.kind in ("most_frequent", "least_frequent"):
        pick = "max" if q.kind == "most_frequent" else "min"
        body = (
            f"full = {{lab: {c}.get(lab, 0) for lab in {list(LABELS)!r}}}\n{a} = {pick}(full, key=full.get)"
        )
    else:
        body = (
            f'cut = datetime.strptime({q.date!r}, "%b %d, %Y").date()\n'
            f"before = sum(1 for d, lab in {r} if d < cut and lab == {q.label!r})\n"
            f"after = sum(1 for d, lab in {r} if d >= cut and lab == {q.label!r})\n"
            f'print("before:", before, "on or after:", after)\n'
            f'{a} = "yes" if before > after else "no"'
        )
    return f"{body}\nprint({a})\nFINAL({a})"


def _ask(q: Query) -> str:
    return {
        "count": f"the number of '{q.label}' instances",
        "count_year": f"the number of '{q.label}' instances dated in {q.year}",
        "most_frequent": "the most frequent label",
        "least_frequent": "the least frequent label",
        "compare_dates": f"whether '{q.label}' is more frequent before {q.date} than on or after it",
    }[q.kind]


_RULES_PROSE = (
    "Each line has a date and a question; the label is the kind of answer the question asks for. "
    "Too many lines to read: I write wording rules (wh-words, key phrases) and try them on a few lines.",
    "The labels are not given. I classify each question with keyword rules in code and check them on "
    "the first lines.",
)


def _probe_then_count(q: Query, s: _Style, rng: random.Random) -> Script:
    yield _fence(
        rng.choice(
            [
                "Let me look at `context` first: its type, size and a few lines.",
                "First a probe: what the context is and how its lines look.",
            ]
        ),
        _probe(s),
    )
    yield _fence(rng.choice(_RULES_PROSE), _rules_code(s))
    yield _fence(
        rng.choice(["The rules look right. Parse every line's date and label, and count.", "Now all lines."]),
        _count_code(s),
    )
    yield _fence(f"Now compute {_ask(q)} and answer.", _answer_code(q, s))


def _one_pass(q: Query, s: _Style, rng: random.Random) -> Script:
    prose = rng.choice(
        [
            f"The question wants {_ask(q)}. I probe the lines and write labelling rules, checked on a few.",
            "Thousands of short questions: label them with code (wh-words, key phrases), not by reading.",
        ]
    )
    yield _fence(prose, f"{_probe(s)}\n{_rules_code(s)}")
    yield _fence(
        rng.choice(["Labels look plausible. Count them all and compute the answer.", f"Now {_ask(q)}."]),
        f"{_count_code(s)}\n{_answer_code(q, s)}",
    )


def _counter_table(q: Query, s: _Style, rng: random.Random) -> Script:
    yield _fence("Probe the context before anything else.", _probe(s))
    yield _fence(rng.choice(_RULES_PROSE), _rules_code(s))
    code = (
        _count_code(s)
        + f"""
per_year = Counter((d.year, lab) for d, lab in {s.rows})
for y in sorted({{d.year for d, _ in {s.rows}}}):
    print(y, {{lab: per_year[y, lab] for lab in {s.counts}}})"""
    )
    yield _fence("I parse dates with datetime, label every line, and print a label table per year.", code)
    yield _fence(f"The table is printed. The answer is {_ask(q)}.", _answer_code(q, s))


_SCRIPTS = {"probe-then-count": _probe_then_count, "one-pass": _one_pass, "counter-table": _counter_table}


def script(episode_id: str, question: str, strategy: str | None = None) -> tuple[str, Script]:
    """The strategy and script for one episode (styled by a hash of the episode id)."""
    rng = random.Random(f"rlm-env/demos/{FAMILY}/{episode_id}")
    strategy = strategy or rng.choice(STRATEGIES)
    return strategy, _SCRIPTS[strategy](parse_query(question), _style(rng), rng)

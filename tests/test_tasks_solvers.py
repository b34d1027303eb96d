"""Answer correctness: each family's expected answer is recomputed by an independent solver
that only reads the generated context and question (plus the query spec in the metadata),
never the generator's internal state."""

from __future__ import annotations

import ast
import datetime as dt
import itertools
import re
from collections import Counter, defaultdict

import pytest

from rlm_env.tasks import codeqa, multihop, niah, oolong, oolong_pairs
from rlm_env.tasks.base import ContextDir

SPLITS = ("train", "test")


# -- S-NIAH ------------------------------------------------------------------------------
def solve_niah(context: str, question: str) -> str:
    key = re.search(r"\b([a-z]+-[a-z]+)\b", question).group(1)
    paras = [p for p in context.split("\n\n") if re.search(rf"(?<![\w-]){re.escape(key)}(?![\w-])", p)]
    assert len(paras) == 1, paras
    p = paras[0]
    for pat in (r'"([^"]+)"', r"\b([A-Z]\d-[A-Z]{2}\d{2})\b", r"\b(\d{7})\b"):
        m = re.search(pat, p)
        if m:
            return m.group(1)
    raise AssertionError(p)


@pytest.mark.parametrize("split", SPLITS)
@pytest.mark.parametrize("seed", range(8))
def test_niah_answer(split, seed):
    kind = niah.NEEDLE_KINDS[seed % 3]
    t = niah.generate(seed, 4000, split, needle_kind=kind, n_distractors=4)
    assert solve_niah(t.context, t.question) == t.expected_answer
    key = t.metadata["needle_key"]
    adj, noun = key.split("-")
    near = re.findall(rf"\b(?:{adj}-[a-z]+|[a-z]+-{noun})(?:-\d)?\b", t.context)
    assert len(set(near) - {key}) >= 4  # the distractors are there


@pytest.mark.parametrize("source", ["stdlib_code", "stdlib_docs", "licenses", "copyright", "generated"])
def test_niah_each_filler_source(source):
    t = niah.generate(1, 3000, "train", filler=source)
    assert solve_niah(t.context, t.question) == t.expected_answer


# -- OOLONG ------------------------------------------------------------------------------
LINE = re.compile(r"^Date: (\w{3} \d{2}, \d{4}) \|\| User: (\d+) \|\| Instance: (.+)$")


def classify(q: str) -> str:
    """The label of a question from what it asks, by hand-written rules (not the templates)."""
    if re.search(r"\b[A-Z]{2,}\b", q):
        return "abbreviation"
    s = q.lower()
    if s.startswith(("how many", "when ", "how far", "what year", "how old", "how long", "how much")) or (
        "population" in s
    ):
        return "numeric"
    if (
        s.startswith(("who ", "which painter", "which composer"))
        or "first mayor" in s
        or "architect who" in s
    ):
        return "human"
    if (
        s.startswith(("where", "in which country", "what city", "which river", "in what state"))
        or "capital of" in s
    ):
        return "location"
    if s.startswith(("why", "how does", "what causes", "how can i", "what does it mean")) or any(
        w in s for w in ("meaning of", "difference between")
    ):
        return "description"
    return "entity"


def parse_lines(context: str) -> list[tuple[dt.date, int, str]]:
    out = []
    for line in context.splitlines():
        m = LINE.match(line)
        assert m, line
        out.append(
            (dt.datetime.strptime(m.group(1), "%b %d, %Y").date(), int(m.group(2)), classify(m.group(3)))
        )
    return out


@pytest.mark.parametrize("split", SPLITS)
@pytest.mark.parametrize("query", oolong.QUERIES)
@pytest.mark.parametrize("seed", range(3))
def test_oolong_answer(split, query, seed):
    t = oolong.generate(seed, 6000, split, query=query)
    rows = parse_lines(t.context)
    q = t.metadata["query"]
    kind, label = q["type"], q["label"]
    counts = Counter(lab for _, _, lab in rows)
    if kind == "count":
        want = counts[label]
    elif kind == "count_year":
        assert str(q["year"]) in t.question
        want = sum(1 for d, _, lab in rows if lab == label and d.year == q["year"])
    elif kind in ("most_frequent", "least_frequent"):
        ranked = sorted(oolong.LABELS, key=lambda lab: counts[lab])
        want = ranked[-1] if kind == "most_frequent" else ranked[0]
    else:
        cut = dt.datetime.strptime(q["date"], "%b %d, %Y").date()
        assert q["date"] in t.question
        before = sum(1 for d, _, lab in rows if lab == label and d < cut)
        after = sum(1 for d, _, lab in rows if lab == label and d >= cut)
        want = "yes" if before > after else "no"
    if kind not in ("most_frequent", "least_frequent"):
        assert f"'{label}'" in t.question.split("infer")[-1]
    assert t.expected_answer == want
    assert t.scorer == ("numeric" if kind.startswith("count") else "exact")


# -- OOLONG-Pairs ------------------------------------------------------------------------
@pytest.mark.parametrize("split", SPLITS)
@pytest.mark.parametrize("condition", oolong_pairs.CONDITIONS)
def test_oolong_pairs_answer(split, condition):
    t = oolong_pairs.generate(3, 8000, split, condition=condition)
    c = t.metadata["condition"]
    cut = dt.datetime.strptime(c["date"], "%b %d, %Y").date()
    total, before, after = defaultdict(Counter), defaultdict(Counter), defaultdict(Counter)
    for d, user, lab in parse_lines(t.context):
        total[user][lab] += 1
        (before if d < cut else after)[user][lab] += 1
    x, y, th = c["x"], c["y"], c["t"]
    users = sorted(total)
    assert f"'{x}'" in t.question and str(th) in t.question
    if condition == "mixed":
        a = {u for u in users if before[u][x] >= th}
        b = {u for u in users if after[u][y] >= c["t2"]}
        want = {tuple(sorted(p)) for p in itertools.product(a, b) if p[0] != p[1]}
    else:
        ok = {
            "at_least": lambda u: total[u][x] >= th,
            "either_label": lambda u: total[u][x] + total[u][y] >= th,
            "after_date": lambda u: after[u][x] >= th,
            "exactly": lambda u: total[u][x] == th,
        }[condition]
        want = set(itertools.combinations([u for u in users if ok(u)], 2))
    assert sorted(want) == [tuple(p) for p in t.expected_answer]
    assert 1 <= len(want) <= 300
    assert all(a < b for a, b in t.expected_answer)


# -- multi-hop ---------------------------------------------------------------------------
CUES = {
    "birth_city": ("born", "native of", "birthplace"),
    "mentor": ("mentor", "trained under"),
    "founded": ("founded", "started", "founder"),
    "founder": ("founded", "started", "founder"),
    "hq": ("headquarter", "head office", "based in"),
    "mayor": ("mayor",),
    "inventor": ("invented", "created", "creating"),
}


def solve_multihop(docs: dict[str, str], start: str, relations: list[str]) -> tuple[str, list[str]]:
    by_title = {}
    for doc_id, text in docs.items():
        title = text.split("\n", 1)[0]
        assert title not in by_title
        by_title[title] = doc_id
    pattern = re.compile("|".join(rf"\b{re.escape(t)}\b" for t in sorted(by_title, key=len, reverse=True)))
    entity, visited = start, [by_title[start]]
    for rel in relations:
        text = docs[by_title[entity]]
        found = set()
        for sentence in re.split(r"(?<=\.)\s+", text):
            if entity in sentence and any(cue in sentence.lower() for cue in CUES[rel]):
                found |= set(pattern.findall(sentence)) - {entity}
        assert len(found) == 1, (entity, rel, found)
        entity = found.pop()
        visited.append(by_title[entity])
    return entity, visited


@pytest.mark.parametrize("split", SPLITS)
@pytest.mark.parametrize("hops", [2, 3, 4])
@pytest.mark.parametrize("seed", range(3))
def test_multihop_answer(split, hops, seed):
    t = multihop.generate(seed, 12_000, split, hops=hops)
    m = t.metadata
    assert m["start"] in t.question and len(m["relations"]) == hops
    answer, visited = solve_multihop(t.context, m["start"], m["relations"])
    assert answer == t.expected_answer
    assert len(set(visited)) == hops + 1  # every hop reads a different document
    # near-twin names: all but at most one name per type share a word with another name
    titles = [d.split("\n", 1)[0] for d in t.context.values()]
    multi = [x for x in titles if " " in x]
    lonely = [x for x in multi if not any(set(x.split()) & set(y.split()) for y in multi if y != x)]
    assert len(lonely) <= 3, lonely


# -- CodeQA ------------------------------------------------------------------------------
def _sources(context) -> dict[str, str]:
    if isinstance(context, ContextDir):
        return {str(p.relative_to(context.path)): p.read_text() for p in context.path.rglob("*.py")}
    return context


class _Calls(ast.NodeVisitor):
    def __init__(self, name: str):
        self.name, self.n = name, 0

    def visit_Call(self, node: ast.Call) -> None:
        f = node.func
        if (isinstance(f, ast.Name) and f.id == self.name) or (
            isinstance(f, ast.Attribute) and f.attr == self.name
        ):
            self.n += 1
        self.generic_visit(node)


def solve_codeqa(sources: dict[str, str], question: str, kind: str) -> str:
    trees = {p: ast.parse(s) for p, s in sources.items()}
    ticks = [x for x in re.findall(r"`([^`]+)`", question.split("\n")[0]) if re.fullmatch(r"[\w/.-]+", x)]
    fn_types = (ast.FunctionDef, ast.AsyncFunctionDef)
    if kind == "which_module":
        hits = [
            p
            for p, tr in trees.items()
            if any(isinstance(n, fn_types) and n.name == ticks[0] for n in tr.body)
        ]
    elif kind == "which_class":
        hits = [
            f"{p}::{c.name}"
            for p, tr in trees.items()
            for c in tr.body
            if isinstance(c, ast.ClassDef)
            and any(isinstance(m, fn_types) and m.name == ticks[0] for m in c.body)
        ]
    elif kind == "n_params":
        path = next(x for x in ticks if x.endswith(".py"))
        name = next(x for x in ticks if not x.endswith(".py"))
        node = next(n for n in trees[path].body if isinstance(n, fn_types) and n.name == name)
        hits = [str(sum(isinstance(a, ast.arg) for a in ast.walk(node.args)))]
    elif kind == "call_sites":
        counter = _Calls(ticks[0])
        for tr in trees.values():
            counter.visit(tr)
        hits = [str(counter.n)]
    else:
        doc = re.search(r'"(.+)"\?', question).group(1)
        hits = [
            f"{p}::{n.name}"
            for p, tr in trees.items()
            for n in ast.walk(tr)
            if isinstance(n, fn_types) and (ast.get_docstring(n) or "").strip().split("\n")[0].strip() == doc
        ]
    assert len(hits) == 1, hits
    options = dict(re.findall(r"^([A-D])\) (.+)$", question, re.M))
    assert len(options) == 4 and len(set(options.values())) == 4
    letters = [k for k, v in options.items() if v == hits[0]]
    assert len(letters) == 1, (hits, options)
    return letters[0]


@pytest.mark.parametrize("split", SPLITS)
@pytest.mark.parametrize("kind", codeqa.QUESTIONS)
@pytest.mark.parametrize("seed", range(2))
def test_codeqa_answer(split, kind, seed):
    t = codeqa.generate(seed, 20_000, split, question=kind)
    assert t.metadata["question_type"] == kind and t.metadata["python_version"]
    assert solve_codeqa(_sources(t.context), t.question, kind) == t.expected_answer


def test_codeqa_letters_are_spread():
    letters = Counter(codeqa.generate(s, 4000, "train").expected_answer for s in range(24))
    assert set(letters) == set("ABCD")

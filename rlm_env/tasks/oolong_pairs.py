"""OOLONG-Pairs: list every pair of users whose items satisfy label and date conditions.

OOLONG-Pairs (from the RLM paper) reuses OOLONG's trec_coarse lines but asks for ALL pairs of
user ids meeting a condition on their instances' inferred labels and dates, scored by F1
over the listed pairs. It is the quadratic end of the benchmark: base models score near 0
and RLMs build the answer programmatically (classify each line with sub-calls, tally per
user, enumerate pairs in a variable).

The lines come from `oolong.items` (same format, same split-specific templates and pools, a
stream of its own). Conditions, with thresholds chosen from the data so that the answer
holds between 1 and `max_pairs` pairs whatever the length:

- `at_least`: both users have at least T instances labelled X;
- `either_label`: both have at least T instances labelled X or Y, counted together;
- `after_date`: both have at least T instances labelled X dated on or after D;
- `exactly`: both have exactly T instances labelled X;
- `mixed` (asymmetric): one has at least T1 instances labelled X before D, the other at
  least T2 labelled Y on or after D.

The expected answer is the sorted list of `[id_a, id_b]` with `id_a < id_b` (scorer "pair_f1",
which ignores order inside a pair and in the list).
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from typing import Any

from rlm_env.tasks import oolong
from rlm_env.tasks.base import Task
from rlm_env.tasks.oolong import LABELS, N_DAYS, format_date, label_question_header
from rlm_env.tasks.sizing import Sink, base_metadata, build_sized, check_split, output_path, rng_for, task_id
from rlm_env.tasks.tokens import TokenCounter

FAMILY = "oolong_pairs"
SCORER = "pair_f1"
CHARS_PER_TOKEN = oolong.CHARS_PER_TOKEN
CONDITIONS = ("at_least", "either_label", "after_date", "exactly", "mixed")

_TEXT = {
    "train": {
        "prefix": "List all pairs of user IDs where ",
        "at_least": "both users have at least {t} instances labelled '{x}'.",
        "either_label": "both users have at least {t} instances labelled '{x}' or '{y}' (counted together).",
        "after_date": "both users have at least {t} instances labelled '{x}' dated on or after {d}.",
        "exactly": "both users have exactly {t} instances labelled '{x}'.",
        "mixed": "one user has at least {t} instances labelled '{x}' dated before {d} and the other user "
        "has at least {t2} instances labelled '{y}' dated on or after {d}.",
        "format": " Give the answer as a list of pairs [id_a, id_b] with id_a < id_b, each pair once; "
        "build the list in a variable and set it as the answer.",
    },
    "test": {
        "prefix": "Find every pair of distinct users (by user id) such that ",
        "at_least": "each of the two has {t} or more '{x}' instances.",
        "either_label": "each of the two has {t} or more instances that are '{x}' or '{y}' combined.",
        "after_date": "each of the two has {t} or more '{x}' instances from {d} onwards.",
        "exactly": "each of the two has precisely {t} '{x}' instances.",
        "mixed": "one of them has {t} or more '{x}' instances before {d} while the other has {t2} or more "
        "'{y}' instances from {d} onwards.",
        "format": " Return a list of [smaller_id, larger_id] pairs without repeats, assembled in a "
        "variable and set as the answer.",
    },
}


def _threshold(values: dict[int, int], max_users: int, exact: bool = False) -> tuple[int, list[int]] | None:
    """The smallest T >= 1 whose qualifying users number 2..max_users (None if none does)."""
    top = max(values.values(), default=0)
    for t in range(1, top + 1):
        users = sorted(u for u, v in values.items() if (v == t if exact else v >= t))
        if 2 <= len(users) <= max_users:
            return t, users
    return None


def _pairs_within(users: list[int]) -> list[list[int]]:
    return [[a, b] for i, a in enumerate(users) for b in users[i + 1 :]]


def _solve(kind: str, x: str, y: str, st: dict, max_pairs: int) -> tuple[dict, list[list[int]]] | None:
    k = int((1 + math.isqrt(1 + 8 * max_pairs)) // 2)
    total, before, after = st["total"], st["before"], st["after"]
    users = list(total)
    if kind in ("at_least", "exactly", "either_label", "after_date"):
        if kind == "either_label":
            vals = {u: total[u][x] + total[u][y] for u in users}
        elif kind == "after_date":
            vals = {u: after[u][x] for u in users}
        else:
            vals = {u: total[u][x] for u in users}
        found = _threshold(vals, k, exact=kind == "exactly")
        if found is None:
            return None
        return {"t": found[0]}, _pairs_within(found[1])
    half = max(2, int(math.isqrt(max_pairs)))
    a = _threshold({u: before[u][x] for u in users}, half)
    b = _threshold({u: after[u][y] for u in users}, half)
    if a is None or b is None:
        return None
    pairs = {tuple(sorted((p, q))) for p in a[1] for q in b[1] if p != q}
    if not pairs:
        return None
    return {"t": a[0], "t2": b[0]}, [list(p) for p in sorted(pairs)]


def generate(
    seed: int,
    length_tokens: int,
    split: str = "train",
    *,
    condition: str | None = None,
    max_pairs: int = 300,
    out_dir: str | None = None,
    file_threshold_tokens: int | None = None,
    counter: TokenCounter | None = None,
) -> Task:
    """One OOLONG-Pairs task; `condition` is one of `CONDITIONS` (default: random)."""
    check_split(split)
    knobs: dict[str, Any] = {"condition": condition} if condition else {}
    if max_pairs != 300:
        knobs["max_pairs"] = max_pairs
    if condition is not None and condition not in CONDITIONS:
        raise ValueError(f"condition must be one of {CONDITIONS}, got {condition!r}")
    rng = rng_for(FAMILY, split, seed, "query")
    cut = rng.randrange(N_DAYS * 3 // 10, N_DAYS * 7 // 10)

    def write(sink: Sink) -> dict[str, Any]:
        total: dict[int, Counter] = defaultdict(Counter)
        before: dict[int, Counter] = defaultdict(Counter)
        after: dict[int, Counter] = defaultdict(Counter)
        for day, user, lab, line in oolong.items(split, seed, sink.budget, family=FAMILY):
            if sink.full:
                break
            sink.add(line)
            total[user][lab] += 1
            (before if day < cut else after)[user][lab] += 1
        return {"total": total, "before": before, "after": after}

    tid = task_id(FAMILY, split, seed, length_tokens, knobs)
    path = output_path(tid, length_tokens, out_dir, file_threshold_tokens, ".txt")
    sized = build_sized(write, length_tokens, chars_per_token=CHARS_PER_TOKEN, counter=counter, path=path)
    kinds = [condition] if condition else rng.sample(CONDITIONS, len(CONDITIONS))
    tries = [
        (kind, x, y) for kind in kinds for x in rng.sample(LABELS, 6) for y in rng.sample(LABELS, 6) if x != y
    ]
    for kind, x, y in tries:
        solved = _solve(kind, x, y, sized.state, max_pairs)
        if solved is not None:
            break
    else:
        raise ValueError(
            f"no {FAMILY} condition has 1..{max_pairs} pairs at {length_tokens} tokens; try a longer context"
        )
    params, pairs = solved
    d = format_date(cut)
    text = _TEXT[split]
    question = label_question_header(split) + text["prefix"] + text[kind].format(x=x, y=y, d=d, **params)
    question += text["format"]
    meta = base_metadata(FAMILY, split, seed, length_tokens, sized, knobs)
    meta.update(
        condition={"type": kind, "x": x, "y": y, "date": d, "cut_day": cut, **params},
        n_pairs=len(pairs),
        n_users=len(sized.state["total"]),
    )
    return Task(tid, sized.context, question, pairs, SCORER, meta)

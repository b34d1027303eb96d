"""CodeQA: multiple-choice questions about a real code base (LongBench-v2 CodeQA style).

LongBench-v2's CodeQA hands the model a whole repository and a four-option question about
it. Here the repository is real code already on every machine: the Python standard library
source. A task picks a deterministic subset of its modules up to the target length and asks
a question whose answer is computed from the code's AST, so it is always checkable:

- `which_module`: which file defines the function F (F defined exactly once);
- `which_class`: which class defines a method named M (exactly one does);
- `n_params`: how many parameters function F of file P takes (self, *args, **kwargs count);
- `call_sites`: how many calls `Y(...)` or `obj.Y(...)` appear across all files;
- `which_function`: which function's docstring starts with a given summary line.

Four options, one correct, the letter drawn at random (scorer "multiple_choice", expected
"A".."D"). Splits are disjoint code bases: each file belongs to train or test by a hash of its
path, and the two splits phrase questions differently. The stdlib changes between Python
patch versions, so the version is recorded in the metadata; the same version gives the same
task. One split holds about half the stdlib (~15 MB, ~3.5M tokens); `roots` adds other
directories of Python files for longer contexts. The context is a dict {path: source}, or a
`ContextDir` (a copy of the chosen files) from `file_threshold_tokens` on.
"""

from __future__ import annotations

import ast
import functools
import os
import shutil
import sys
import sysconfig
import zlib
from collections import Counter
from pathlib import Path
from typing import Any

from rlm_env.tasks.base import ContextDir, Task
from rlm_env.tasks.filler import stdlib_files
from rlm_env.tasks.sizing import Sized, base_metadata, check_split, output_path, rng_for, task_id
from rlm_env.tasks.tokens import EXACT_LIMIT_CHARS, TokenCounter, default_counter

FAMILY = "codeqa"
SCORER = "multiple_choice"
CHARS_PER_TOKEN = 3.6
"""Measured with the SmolLM2 tokenizer on stdlib sources (used only without a tokenizer)."""
QUESTIONS = ("which_module", "which_class", "n_params", "call_sites", "which_function")
LETTERS = "ABCD"

_TEXT = {
    "train": {
        "which_module": "Which file defines the function `{name}`?",
        "which_class": "Which class defines a method named `{name}`?",
        "n_params": "How many parameters does the function `{name}` defined in `{path}` take? Count every "
        "parameter in its signature, including self/cls, *args and **kwargs.",
        "call_sites": "How many call sites of `{name}` are there across all files, counting every call "
        "written as `{name}(...)` or `<expression>.{name}(...)`?",
        "which_function": 'Which function has a docstring whose first line is: "{doc}"?',
        "tail": "Answer with the letter of the correct option (A, B, C or D).",
    },
    "test": {
        "which_module": "The function `{name}` is defined in exactly one file of this code base. Which one?",
        "which_class": "Exactly one class in the code base has a method called `{name}`. Which class is it?",
        "n_params": "In `{path}`, the signature of `{name}` lists how many parameters (self/cls, *args "
        "and **kwargs each count as one)?",
        "call_sites": "Counting both plain calls `{name}(...)` and attribute calls `x.{name}(...)`, how "
        "many times is `{name}` called in the whole code base?",
        "which_function": 'Whose docstring opens with the line "{doc}"?',
        "tail": "Reply with a single letter: A, B, C or D.",
    },
}


def _pool(split: str, roots: tuple[str, ...] | None) -> list[tuple[str, Path, int]]:
    """(relative path, file, size) of the split's files, sorted: stdlib or the given roots."""
    return [f for f in _all_files(roots) if zlib.crc32(f[0].encode()) % 2 == (0 if split == "train" else 1)]


@functools.lru_cache(maxsize=4)
def _all_files(roots: tuple[str, ...] | None) -> tuple[tuple[str, Path, int], ...]:
    out = []
    if roots is None:
        base = Path(sysconfig.get_paths()["stdlib"])
        found = [(str(p.relative_to(base)), p) for p in stdlib_files()]
    else:
        found = []
        for root in roots:
            base = Path(root)
            for dirpath, dirs, files in os.walk(base):
                dirs[:] = sorted(d for d in dirs if d != "__pycache__")
                found += [
                    (f"{base.name}/{Path(dirpath, f).relative_to(base)}", Path(dirpath, f))
                    for f in files
                    if f.endswith(".py")
                ]
    for rel, path in sorted(found):
        size = path.stat().st_size
        if size >= 200:
            out.append((rel, path, size))
    return tuple(out)


@functools.lru_cache(maxsize=8192)
def _summary(path: str) -> dict[str, Any] | None:
    """What the questions need from one file, or None if it does not parse."""
    try:
        tree = ast.parse(Path(path).read_text(encoding="utf-8"))
    except (SyntaxError, ValueError, UnicodeDecodeError, OSError, RecursionError):
        return None
    funcs, methods, docs, calls = {}, {}, [], Counter()
    fn_types = (ast.FunctionDef, ast.AsyncFunctionDef)
    for node in tree.body:
        if isinstance(node, fn_types):
            funcs[node.name] = _n_params(node.args)
        elif isinstance(node, ast.ClassDef):
            methods[node.name] = [m.name for m in node.body if isinstance(m, fn_types)]
    defs = Counter()
    for node in ast.walk(tree):
        if isinstance(node, fn_types):
            defs[node.name] += 1
            doc = ast.get_docstring(node)
            if doc and 20 <= len(doc.splitlines()[0].strip()) <= 100:
                docs.append((node.name, doc.splitlines()[0].strip()))
        elif isinstance(node, ast.Call):
            f = node.func
            name = f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else None
            if name:
                calls[name] += 1
    return {"funcs": funcs, "methods": methods, "docs": docs, "calls": calls, "defs": defs}


def _n_params(a: ast.arguments) -> int:
    return (
        len(a.posonlyargs) + len(a.args) + len(a.kwonlyargs) + (a.vararg is not None) + (a.kwarg is not None)
    )


def _question(kind: str, chosen: list[tuple[str, Path, int]], rng) -> tuple[dict, str, list[str]] | None:
    """(fields for the text, correct option, three wrong options), or None if impossible."""
    sums = {rel: _summary(str(p)) for rel, p, _ in chosen}
    defs, calls = Counter(), Counter()
    for s in sums.values():
        defs.update(s["defs"])
        calls.update(s["calls"])
    rels = list(sums)
    if kind == "which_module":
        cands = sorted((n, r) for r, s in sums.items() for n in s["funcs"] if defs[n] == 1)
        if not cands or len(rels) < 4:
            return None
        name, rel = rng.choice(cands)
        return {"name": name}, rel, rng.sample([r for r in rels if r != rel], 3)
    if kind == "which_class":
        classes = sorted((f"{r}::{c}", ms) for r, s in sums.items() for c, ms in s["methods"].items())
        cands = sorted((m, cls) for cls, ms in classes for m in ms if defs[m] == 1 and not m.startswith("__"))
        if not cands or len(classes) < 4:
            return None
        name, cls = rng.choice(cands)
        return {"name": name}, cls, rng.sample([c for c, ms in classes if name not in ms and c != cls], 3)
    if kind == "n_params":
        cands = sorted((n, r, k) for r, s in sums.items() for n, k in s["funcs"].items() if defs[n] == 1)
        if not cands:
            return None
        name, rel, k = rng.choice(cands)
        wrong = rng.sample([v for v in range(max(0, k - 3), k + 5) if v != k], 3)
        return {"name": name, "path": rel}, str(k), [str(v) for v in wrong]
    if kind == "call_sites":
        cands = sorted(n for n, c in calls.items() if 2 <= c <= 80 and len(n) > 3)
        if not cands:
            return None
        name = rng.choice(cands)
        k = calls[name]
        wrong = rng.sample([v for v in range(max(0, k - 6), k + 7) if v != k], 3)
        return {"name": name}, str(k), [str(v) for v in wrong]
    firsts = Counter(d for s in sums.values() for _, d in s["docs"])
    cands = sorted(
        (d, f"{r}::{n}")
        for r, s in sums.items()
        for n, d in s["docs"]
        if firsts[d] == 1 and s["defs"][n] == 1 and '"' not in d
    )
    if len(cands) < 4:
        return None
    doc, fn = rng.choice(cands)
    others = [f for d, f in cands if f != fn and d != doc]
    if len(others) < 3:
        return None
    return {"doc": doc}, fn, rng.sample(others, 3)


@functools.lru_cache(maxsize=16384)
def _count_file(path: str, counter: TokenCounter) -> tuple[int, int]:
    text = Path(path).read_text(encoding="utf-8")
    return len(text), counter.count(text)


def _select(order: list, target: int, counter: TokenCounter) -> tuple[list, int, int, str]:
    """Files in `order` until about `target` tokens: counted exactly (per file, cached) while
    the tokenizer is there and under `EXACT_LIMIT_CHARS`, then by the ratio measured so far."""
    chosen, tokens, chars, exact = [], 0, 0, counter.exact
    measured_chars, measured_tokens = 0, 0
    ratio = CHARS_PER_TOKEN
    for rel, path, size in order:
        if tokens >= target * 0.99:
            break
        if tokens + size / ratio > target * 1.03 or _summary(str(path)) is None:
            continue
        if counter.exact and measured_chars < EXACT_LIMIT_CHARS:
            n_chars, n = _count_file(str(path), counter)
            measured_chars, measured_tokens = measured_chars + n_chars, measured_tokens + n
            ratio = measured_chars / max(1, measured_tokens)
        else:
            n_chars, n, exact = size, round(size / ratio), False
        if tokens + n > target * 1.02:
            continue
        chosen.append((rel, path, size))
        tokens, chars = tokens + n, chars + n_chars
    return chosen, tokens, chars, "exact" if exact else "estimated"


def generate(
    seed: int,
    length_tokens: int,
    split: str = "train",
    *,
    question: str | None = None,
    roots: list[str] | None = None,
    out_dir: str | None = None,
    file_threshold_tokens: int | None = None,
    counter: TokenCounter | None = None,
) -> Task:
    """One CodeQA task over about `length_tokens` tokens of code (sum of file texts)."""
    check_split(split)
    knobs = {k: v for k, v in dict(question=question, roots=roots).items() if v is not None}
    if question is not None and question not in QUESTIONS:
        raise ValueError(f"question must be one of {QUESTIONS}, got {question!r}")
    pool = _pool(split, tuple(roots) if roots else None)
    if sum(size for *_, size in pool) / 3.0 < 0.9 * length_tokens:  # fail fast, before tokenizing
        raise ValueError(
            f"{FAMILY}: {length_tokens} tokens exceed the {split} split's code "
            f"({len(pool)} files); pass roots=[...] to add directories of Python files"
        )
    counter = counter or default_counter()
    qrng = rng_for(FAMILY, split, seed, "question")
    kinds = [question] if question else qrng.sample(QUESTIONS, len(QUESTIONS))
    made = None
    for attempt in range(8):  # a small code subset may not allow the asked kind: redraw files
        order = rng_for(FAMILY, split, seed, f"files/{attempt}").sample(pool, len(pool))
        chosen, tokens, chars, measure = _select(order, length_tokens, counter)
        if tokens < 0.9 * length_tokens:
            raise ValueError(
                f"{FAMILY}: {length_tokens} tokens exceed the {split} split's code "
                f"(got {tokens}); pass roots=[...] to add directories of Python files"
            )
        for kind in kinds:
            made = _question(kind, chosen, qrng)
            if made is not None:
                break
        if made is not None:
            break
    if made is None:
        raise ValueError(f"{FAMILY}: no question of kinds {kinds} fits {length_tokens} tokens")
    tid = task_id(FAMILY, split, seed, length_tokens, knobs)
    big = output_path(tid, length_tokens, out_dir, file_threshold_tokens, "")
    if big is None:
        context: Any = {rel: path.read_text(encoding="utf-8") for rel, path, _ in chosen}
    else:
        shutil.rmtree(big, ignore_errors=True)
        for rel, path, _ in chosen:
            (big / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, big / rel)
        context = ContextDir(big)
    sized = Sized(context, chosen, tokens, chars, measure, counter.describe())
    fields, right, wrong = made
    options = wrong[:]
    pos = qrng.randrange(4)
    options.insert(pos, right)
    text = _TEXT[split]
    body = text[kind].format(**fields)
    opts = "\n".join(f"{LETTERS[i]}) {o}" for i, o in enumerate(options))
    meta = base_metadata(FAMILY, split, seed, length_tokens, sized, knobs)
    meta.update(
        question_type=kind,
        options=options,
        correct_option=right,
        n_files=len(chosen),
        python_version=sys.version.split()[0],
        code_base="stdlib" if roots is None else "roots",
        length_of="sum of file texts",
    )
    return Task(tid, context, f"{body}\n\n{opts}\n\n{text['tail']}", LETTERS[pos], SCORER, meta)

"""Haystack text: real text already on a Debian + Python machine, plus generated prose.

Long-context tasks need filler that reads like real data, not one sentence repeated. The
sources here need no download:

- `stdlib_code`: excerpts of the Python standard library's own source files;
- `stdlib_docs`: docstrings pulled out of those files (English prose about code);
- `licenses`: `/usr/share/common-licenses/*` (GPL, Apache, BSD, ...);
- `copyright`: `/usr/share/doc/*/copyright` files of the installed Debian packages;
- `generated`: sentences from small templates (always available).

A missing source (a slim image without /usr/share/doc) is skipped; `available_sources()`
reports what exists. Files are listed in sorted order and picked with the caller's random
generator, so the same machine gives the same filler; a different Python or Debian package
set gives different (equally good) filler, which is why tasks record the sources they used.
"""

from __future__ import annotations

import functools
import os
import random
import re
import sysconfig
import unicodedata
from collections.abc import Iterator
from pathlib import Path

SOURCES = ("stdlib_code", "stdlib_docs", "licenses", "copyright", "generated")


@functools.lru_cache(maxsize=1)
def stdlib_files() -> tuple[Path, ...]:
    """Every .py file of the standard library (no site-packages), sorted."""
    root = Path(sysconfig.get_paths()["stdlib"])
    if not root.is_dir():
        return ()
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in ("site-packages", "dist-packages", "__pycache__")]
        files += [Path(dirpath, f) for f in filenames if f.endswith(".py")]
    return tuple(sorted(files))


@functools.cache
def _files(source: str) -> tuple[Path, ...]:
    if source in ("stdlib_code", "stdlib_docs"):
        return stdlib_files()
    if source == "licenses":
        root = Path("/usr/share/common-licenses")
        found = sorted(p for p in root.iterdir() if p.is_file()) if root.is_dir() else []
    elif source == "copyright":
        root = Path("/usr/share/doc")
        found = sorted(root.glob("*/copyright")) if root.is_dir() else []
    else:
        return ()
    seen, out = set(), []
    for p in found:  # licenses are often symlinks to one another: keep one of each
        try:
            real = p.resolve()
            if real not in seen and real.is_file() and real.stat().st_size > 200:
                seen.add(real)
                out.append(p)
        except OSError:
            continue
    return tuple(out)


def available_sources() -> dict[str, int]:
    """Source name -> number of files found (generated: 1)."""
    found = {s: len(_files(s)) for s in SOURCES if s != "generated"}
    found["generated"] = 1
    return {k: v for k, v in found.items() if v}


@functools.lru_cache(maxsize=256)
def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""


_DOCSTRING = re.compile(r'"""(.{80,4000}?)"""', re.S)


@functools.lru_cache(maxsize=256)
def _docstrings(path: Path) -> tuple[str, ...]:
    out = []
    for m in _DOCSTRING.finditer(_read(path)):
        lines = [line.strip() for line in m.group(1).strip().splitlines()]
        text = "\n".join(lines).strip()
        if len(text) >= 80:
            out.append(text)
    return tuple(out)


def _excerpt(text: str, rng: random.Random, size: int) -> str:
    if len(text) <= size:
        return text.strip()
    start = rng.randrange(0, len(text) - size)
    para = text.find("\n\n", start, start + size // 2)
    start = para + 2 if para >= 0 else text.find("\n", start) + 1
    end = text.rfind("\n", start, start + size)
    return text[start : end if end > start else start + size].strip()


def _real_piece(source: str, rng: random.Random) -> str:
    """A piece of real text, folded to ASCII: a pure-ASCII context is what lets every episode's
    REPL share one copy of it in memory (the sandbox maps ASCII text files straight into str)."""
    return _to_ascii(_real_piece_raw(source, rng))


def _to_ascii(text: str) -> str:
    if text.isascii():
        return text
    return unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")


def _real_piece_raw(source: str, rng: random.Random) -> str:
    files = _files(source)
    for _ in range(8):
        path = files[rng.randrange(len(files))]
        if source == "stdlib_docs":
            docs = _docstrings(path)
            if docs:
                k = min(len(docs), rng.randint(1, 4))
                start = rng.randrange(len(docs) - k + 1)
                return "\n\n".join(docs[start : start + k])
            continue
        piece = _excerpt(_read(path), rng, rng.randint(600, 3500))
        if piece:
            return piece
    return generated_paragraph(rng)


# -- generated prose ---------------------------------------------------------------------
_SUBJECTS = (
    "The old harbour",
    "A quiet village",
    "The morning market",
    "Our small team",
    "The river valley",
    "An experienced baker",
    "The city library",
    "A travelling musician",
    "The local council",
    "Every spring the orchard",
    "The mountain road",
    "A retired teacher",
    "The night train",
    "The weekly newsletter",
    "A patient gardener",
    "The museum guide",
    "The northern coast",
)
_VERBS = (
    "welcomes",
    "remembers",
    "prepares for",
    "talks about",
    "looks after",
    "writes about",
    "slowly changes",
    "celebrates",
    "depends on",
    "argues about",
    "returns to",
    "describes",
)
_OBJECTS = (
    "the first warm days of the year",
    "a long tradition of careful work",
    "visitors from far away",
    "the price of bread and coffee",
    "stories told by older neighbours",
    "the sound of the sea",
    "a collection of faded photographs",
    "the schedule of the ferry",
    "plans for a new bridge",
    "the colours of autumn leaves",
    "recipes handed down for generations",
    "the rules of a card game",
    "an unexpected letter",
    "the maintenance of the bell tower",
    "the annual boat race",
)
_TAILS = (
    "",
    "",
    " without much fuss",
    " whenever the weather allows",
    " as people have always done",
    " according to most accounts",
    " in the late afternoon",
    " with some reluctance",
    " more often than one would expect",
    " long after the crowds have gone",
)
_OPENERS = ("", "", "", "In general, ", "Some say that ", "By most accounts, ", "Once again, ")


@functools.lru_cache(maxsize=1)
def _bank() -> tuple[str, ...]:
    rng = random.Random("rlm-env/filler-bank")
    out = set()
    while len(out) < 4000:
        opener = rng.choice(_OPENERS)
        subj = rng.choice(_SUBJECTS)
        if opener:
            subj = subj[0].lower() + subj[1:]
        out.add(f"{opener}{subj} {rng.choice(_VERBS)} {rng.choice(_OBJECTS)}{rng.choice(_TAILS)}.")
    return tuple(sorted(out))


def generated_paragraph(rng: random.Random) -> str:
    return " ".join(rng.choices(_bank(), k=rng.randint(4, 10)))


def filler_stream(rng: random.Random, sources: tuple[str, ...] | list[str] | None = None) -> Iterator[str]:
    """An endless stream of paragraphs (each without trailing blank line) drawn from
    `sources` (default: every available one), chosen per paragraph with `rng`."""
    avail = available_sources()
    names = [s for s in (sources or SOURCES) if s in avail] or ["generated"]
    while True:
        source = rng.choice(names)
        yield generated_paragraph(rng) if source == "generated" else _real_piece(source, rng)

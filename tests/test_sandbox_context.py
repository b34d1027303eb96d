"""Context delivery: one read-only, content-addressed file per context, and its metadata."""

# ruff: noqa: F811 - pytest fixtures imported from tests.sandbox_helpers are test arguments

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
import os
import re
import stat
import sys
import time
from pathlib import Path

import pytest

from rlm_env.sandbox import ContextDir, ContextFile, prepare_context
from rlm_env.sandbox.context import ITEM_LENGTHS_CAP, STR_CODECS, char_width
from tests.sandbox_helpers import sandboxes  # noqa: F401 (fixture)

LINES = {  # one line of each str layout CPython has; "latin1" is 1-byte but not ASCII (nor UTF-8)
    "ascii": ("The quick brown fox jumps over the lazy dog.\n", 1),
    "latin1": ("Caf\u00e9 cr\u00e8me, na\u00efve \u00bd fa\u00e7ade\n", 1),
    "bmp": ("\u201cCurly\u201d \u03b1\u03b2\u03b3 \u6f22\u5b57 \u2014 caf\u00e9\n", 2),
    "astral": ("emoji \U0001f600 and \U0001d11e, caf\u00e9 \u2014 done\n", 4),
}


def test_str_context_metadata_and_file(tmp_path):
    text = "hello world\n" * 100
    pc = prepare_context(text, store_dir=tmp_path, prefix_chars=7)
    data = pc.path.read_bytes()
    assert data == text.encode("utf-8") and pc.size_bytes == pc.file_bytes == len(data)
    assert pc.sha256 == hashlib.sha256(data).hexdigest() and pc.path.name == pc.sha256 + ".txt"
    assert (pc.kind, pc.type_name, pc.length, pc.prefix, pc.item_lengths, pc.ascii, pc.char_width) == (
        "text",
        "str",
        1200,
        "hello w",
        [],
        True,
        1,
    )
    assert stat.S_IMODE(pc.path.stat().st_mode) == 0o444


@pytest.mark.parametrize("layout", LINES)
def test_str_layout_files(tmp_path, layout):
    """A str is stored once in CPython's own layout for it; its identity stays its UTF-8."""
    line, width = LINES[layout]
    text = line * 50
    assert char_width(text) == width
    pc = prepare_context(text, store_dir=tmp_path, prefix_chars=9)
    utf8 = text.encode("utf-8")
    assert (pc.char_width, pc.ascii, pc.length, pc.prefix) == (width, layout == "ascii", len(text), text[:9])
    assert pc.sha256 == hashlib.sha256(utf8).hexdigest() and pc.size_bytes == len(utf8)
    assert pc.path.read_bytes() == text.encode(STR_CODECS[width]) and pc.file_bytes == len(text) * width
    assert pc.path.name == pc.sha256 + (".txt" if layout == "ascii" else f".ucs{width}")
    assert os.listdir(tmp_path) == [pc.path.name] and stat.S_IMODE(pc.path.stat().st_mode) == 0o444
    # the same text from a file on disk: the same layout file, found by hash and not rewritten
    src = tmp_path.parent / f"{layout}-src.txt"
    src.write_bytes(utf8)
    mtime = pc.path.stat().st_mtime_ns
    pf = prepare_context(ContextFile(src), store_dir=tmp_path, prefix_chars=9)
    assert pf == dataclasses.replace(pc, path=src if layout == "ascii" else pc.path)
    assert pc.path.stat().st_mtime_ns == mtime


def test_context_file_layout_is_written_once_and_found_again(tmp_path):
    src = tmp_path / "big.txt"
    bad = b"\xff"  # invalid UTF-8 becomes U+FFFD, exactly as a plain decode would give
    src.write_bytes(b"plain ascii " * 100_000 + "na\u00efve \u2014 ".encode() + bad + "\U0001f600".encode())
    expected = src.read_bytes().decode("utf-8", "replace")
    store = tmp_path / "store"
    t0 = time.monotonic()
    first = prepare_context(ContextFile(src), store_dir=store, prefix_chars=5)
    cold = time.monotonic() - t0
    assert first.path == store / f"{first.sha256}.ucs4" and first.char_width == 4
    assert first.path.read_bytes() == expected.encode("utf-32-le") and first.length == len(expected)
    assert (first.prefix, first.size_bytes) == ("plain", src.stat().st_size)
    mtime = first.path.stat().st_mtime_ns
    again = prepare_context(ContextFile(src), store_dir=store, prefix_chars=5)
    assert again == first and first.path.stat().st_mtime_ns == mtime
    assert prepare_context(expected, store_dir=store).path != first.path  # U+FFFD is other text
    assert cold < 2.0


def test_lone_surrogates_become_what_a_decode_gives(tmp_path):
    text = "bad \ud800 pair \udc00 end " * 3000
    pc = prepare_context(text, store_dir=tmp_path)
    utf8 = text.encode("utf-8", "surrogatepass")
    decoded = utf8.decode("utf-8", "replace")
    assert pc.sha256 == hashlib.sha256(utf8).hexdigest() and pc.length == len(decoded)
    assert pc.path.read_bytes() == decoded.encode(STR_CODECS[pc.char_width])


def test_default_store_dir_is_private(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    pc = prepare_context("private")
    assert pc.path.parent == tmp_path / "rlm-env-contexts"
    assert stat.S_IMODE(pc.path.parent.stat().st_mode) == 0o700


def test_same_context_shares_one_file(tmp_path):
    a = prepare_context("shared text", store_dir=tmp_path)
    mtime = a.path.stat().st_mtime_ns
    b = prepare_context("shared text", store_dir=tmp_path)
    assert a.path == b.path and b.path.stat().st_mtime_ns == mtime
    assert [p.name for p in tmp_path.iterdir()] == [a.path.name]
    assert prepare_context("other text", store_dir=tmp_path).path != a.path


def test_list_and_dict_metadata(tmp_path):
    items = ["abc", "de", {"k": [1, 2]}, 7]
    pc = prepare_context(items, store_dir=tmp_path)
    assert (pc.kind, pc.type_name, pc.length) == ("json", "list", 4)
    assert pc.item_lengths == [3, 2, len('{"k": [1, 2]}'), 1]
    assert json.loads(pc.path.read_text()) == items
    d = prepare_context({"a": "xyz", "b": [1]}, store_dir=tmp_path, prefix_chars=5)
    assert (d.type_name, d.length, d.item_lengths, d.prefix) == ("dict", 2, [3, 3], '{"a":')


def test_item_lengths_capped(tmp_path):
    pc = prepare_context([str(i) for i in range(ITEM_LENGTHS_CAP + 500)], store_dir=tmp_path)
    assert pc.length == ITEM_LENGTHS_CAP + 500 and len(pc.item_lengths) == ITEM_LENGTHS_CAP
    assert pc.item_lengths_truncated and pc.describe()["item_lengths_truncated"]


def test_context_dir_skips_symlinks_and_replaces_bad_bytes(tmp_path):
    root = tmp_path / "docs"
    (root / "sub").mkdir(parents=True)
    (root / "a.txt").write_text("alpha")
    (root / "sub" / "b.md").write_text("beta")
    (root / "bad.bin").write_bytes(b"ok\xff\xfe")
    (root / "passwd").symlink_to("/etc/passwd")
    (root / "linkdir").symlink_to("/etc")
    pc = prepare_context(ContextDir(root), store_dir=tmp_path / "store")
    value = json.loads(pc.path.read_text())
    assert value == {"a.txt": "alpha", "bad.bin": "ok\ufffd\ufffd", "sub/b.md": "beta"}
    assert any(s.startswith("passwd: symlink") for s in pc.skipped)
    assert any(s.startswith("linkdir: symlink") for s in pc.skipped)
    assert "root:" not in pc.path.read_text()
    assert pc.type_name == "dict" and pc.length == 3


def test_context_file_is_used_in_place(tmp_path):
    src = tmp_path / "big.txt"
    src.write_bytes(b"ascii only " * 1000)
    pc = prepare_context(ContextFile(src, "text"), store_dir=tmp_path / "store", prefix_chars=10)
    assert pc.path == src and not (tmp_path / "store").exists()
    assert pc.length == 11000 and pc.prefix == "ascii only" and pc.size_bytes == src.stat().st_size
    u = tmp_path / "u.txt"
    u.write_bytes("\u00fcn\u00efcode ".encode() * 1000 + b"\xff")  # not ASCII: stored in its layout
    pu = prepare_context(ContextFile(u, "text"), store_dir=tmp_path / "store", prefix_chars=10)
    assert pu.path.parent == tmp_path / "store" and pu.char_width == 2  # U+FFFD is not Latin-1
    assert (
        pu.length == 8001 and pu.prefix == "\u00fcn\u00efcode \u00fcn" and pu.size_bytes == u.stat().st_size
    )
    js = tmp_path / "items.json"
    js.write_text(json.dumps(["a", "bb"]))
    pj = prepare_context(ContextFile(js, "json"))
    assert (pj.path, pj.type_name, pj.length, pj.item_lengths) == (js, "list", 2, [1, 2])


def test_forty_megabytes_prepare_fast(tmp_path):
    text = ("0123456789abcdef" * 64 + "\n") * 38_500  # ~40 MB
    t0 = time.monotonic()
    pc = prepare_context(text, store_dir=tmp_path)
    t_str = time.monotonic() - t0
    t0 = time.monotonic()
    pf = prepare_context(ContextFile(pc.path, "text"))
    t_file = time.monotonic() - t0
    assert pf.sha256 == pc.sha256 and pf.length == len(text)
    assert t_str < 2.0 and t_file < 2.0, (t_str, t_file)


@pytest.mark.parametrize(
    "value, check",
    [
        ("plain ü text", "context == 'plain ü text'"),
        ("", "context == ''"),
        (["a", {"b": 1}], "context == ['a', {'b': 1}]"),
        ({"k": [1, 2]}, "context == {'k': [1, 2]}"),
    ],
)
async def test_context_kinds_in_the_repl(sandboxes, value, check):
    sb = await sandboxes(context=value)
    r = await sb.run_cell(check)
    assert r.output == "True\n", r


async def test_context_dir_and_file_in_the_repl(sandboxes, tmp_path):
    root = tmp_path / "d"
    root.mkdir()
    (root / "x.txt").write_text("xx")
    (root / "evil").symlink_to("/etc/passwd")
    sb = await sandboxes(context=prepare_context(ContextDir(root), store_dir=tmp_path / "s"))
    assert (await sb.run_cell("context")).output == "{'x.txt': 'xx'}\n"
    f = tmp_path / "c.txt"
    f.write_bytes(b"caf\xc3\xa9 \xff")
    sb2 = await sandboxes(context=prepare_context(ContextFile(f)))
    assert (await sb2.run_cell("context")).output == "'café \ufffd'\n"


async def test_big_context_loads_once(sandboxes, tmp_path):
    text = "x" * 40_000_000
    pc = prepare_context(text, store_dir=tmp_path)
    sb = await sandboxes(context=pc)
    r = await sb.run_cell("len(context)")
    assert r.output == "40000000\n"
    t0 = time.monotonic()
    for _ in range(20):
        await sb.run_cell("1")
    assert (time.monotonic() - t0) / 20 < 0.01  # cells never carry the context


async def test_two_sandboxes_share_the_context_file(sandboxes, tmp_path):
    a = prepare_context("same words", store_dir=tmp_path)
    b = prepare_context("same words", store_dir=tmp_path)
    sa, sb = await sandboxes(context=a), await sandboxes(context=b)
    assert a.path == b.path and len(os.listdir(tmp_path)) == 1
    assert (await sa.run_cell("context")).output == (await sb.run_cell("context")).output == "'same words'\n"


def _pss(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            for line in open(f"/proc/{pid}/smaps_rollup"):
                if line.startswith("Pss:"):
                    total += int(line.split()[1]) * 1024
        except OSError:
            pass
    return total


# ---- the mapped str: exact, of every layout, shared -----------------------------------------------

EXACT = (  # run in the REPL: the context against a str built the ordinary way from its UTF-8
    "import hashlib, json, re, sys\n"
    "ref = context.encode('utf-8').decode('utf-8')\n"
    "checks = [type(context) is str, context == ref, hash(context) == hash(ref), len(context) == len(ref),\n"
    "  sys.getsizeof(context) == sys.getsizeof(ref), context.isascii() == ref.isascii(),\n"
    "  all(context[i] == ref[i] for i in range(0, len(ref), 997)), context[-1] == ref[-1],\n"
    "  context[123:4567] == ref[123:4567], context[::-3] == ref[::-3], {context: 1}.get(ref) == 1,\n"
    "  re.findall(r'\\w+', context) == re.findall(r'\\w+', ref), re.sub('a', 'b', context) == re.sub('a', 'b', ref),\n"
    "  context.upper() == ref.upper(), context.split() == ref.split(), context.find('caf') == ref.find('caf'),\n"
    "  context.count('\\n') == ref.count('\\n'), json.dumps(context) == json.dumps(ref), (context + '!')[:-1] == ref]\n"
    "print(all(checks), [i for i, c in enumerate(checks) if not c], hashlib.sha256(context.encode()).hexdigest())"
)


@pytest.mark.parametrize("size", ["small", "large"])
@pytest.mark.parametrize("layout", LINES)
async def test_every_str_layout_in_the_repl(sandboxes, tmp_path, layout, size):
    """Large texts are mapped (shared), small ones decoded; the REPL cannot tell them apart."""
    line, width = LINES[layout]
    text = line * (20 if size == "small" else 3000)  # 64 KiB of file is where mapping starts
    pc = prepare_context(text, store_dir=tmp_path)
    sb = await sandboxes(context=pc)
    assert sb.layers["context_shared"] is (size == "large")
    r = await sb.run_cell(EXACT)
    assert r.output == f"True [] {pc.sha256}\n", r
    r = await sb.run_cell("s = context\ns += 'x'\ncontext[-3:] == s[-4:-1], len(context), len(s)")
    assert r.output == f"(True, {len(text)}, {len(text) + 1})\n", r


async def test_a_refused_layout_probe_falls_back_to_a_private_decode(sandboxes, tmp_path):
    """A probe that does not match (here: told ASCII, given 2-byte text) means decode, not guess."""
    pc = prepare_context(LINES["bmp"][0] * 3000, store_dir=tmp_path)
    sb = await sandboxes(context=dataclasses.replace(pc, ascii=True))
    assert not sb.layers["context_shared"]
    assert (await sb.run_cell(EXACT)).output == f"True [] {pc.sha256}\n"


@pytest.mark.parametrize("layout", ["ascii", "latin1", "bmp", "astral"])
async def test_large_context_of_any_layout_shares_the_page_cache(sandboxes, tmp_path, layout):
    line, width = LINES[layout]
    text = line * (8_000_000 // width // len(line))  # an 8 MB file, whatever the width
    pc = prepare_context(text, store_dir=tmp_path)
    assert pc.char_width == width and pc.file_bytes == len(text) * width
    empty = await sandboxes(context="tiny")
    await empty.run_cell("len(context)")
    boxes = [await sandboxes(context=pc) for _ in range(4)]
    for sb in boxes:  # only read every page (copies would blur the measure)
        assert sb.layers["context_shared"]
        assert (await sb.run_cell("context.count('\\n')")).output == f"{text.count(chr(10))}\n"
    extra = sum(_pss(sb.pids()) for sb in boxes) - 4 * _pss(empty.pids())
    assert extra < 1.5 * pc.file_bytes, (extra, pc.file_bytes)  # four episodes, about one copy


# ---- the mapping itself, in this process (worker_io is plain standard-library code) --------------


def _worker_io():
    path = Path(__file__).resolve().parents[1] / "rlm_env" / "sandbox" / "worker_io.py"
    spec = importlib.util.spec_from_file_location("rlm_worker_io_under_test", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _map(wio, pc):
    fd = os.open(pc.path, os.O_RDONLY)
    try:
        return wio.map_str(fd, os.fstat(fd).st_size, pc.char_width, pc.ascii)
    finally:
        os.close(fd)  # the mapping outlives the descriptor, as in the worker


@pytest.mark.parametrize("layout", LINES)
def test_map_str_is_a_canonical_str(tmp_path, layout):
    import ctypes

    text = LINES[layout][0] * 500
    mapped = _map(_worker_io(), prepare_context(text, store_dir=tmp_path))
    assert mapped is not None and type(mapped) is str and mapped is not text
    assert mapped == text and hash(mapped) == hash(text) and sys.getsizeof(mapped) == sys.getsizeof(text)
    assert mapped[7::13] == text[7::13] and mapped.casefold() == text.casefold()
    assert re.findall(r"\W\w", mapped) == re.findall(r"\W\w", text) and mapped.encode() == text.encode()
    assert ctypes.c_wchar_p(mapped).value == text  # CPython 3.11's wchar_t view of it (see worker_io)
    mapped += "!"  # a new str: the mapped one is never resized in place
    assert mapped[:-1] == text


def test_map_str_refuses_what_it_does_not_recognize(tmp_path, monkeypatch):
    wio = _worker_io()
    pc = prepare_context(LINES["bmp"][0] * 500, store_dir=tmp_path)
    fd = os.open(pc.path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        assert wio.map_str(fd, size - 1, 2, False) is None  # not a whole number of characters
        assert wio.map_str(fd, size, 3, False) is None  # no such width
        monkeypatch.setitem(wio._PROBES, 2, ("rlm", "-latin-\xe9"))  # probe and width disagree
        assert wio.map_str(fd, size, 2, False) is None
        monkeypatch.undo()
        monkeypatch.setattr(wio.sys, "implementation", type("Impl", (), {"name": "pypy"}))
        assert wio.map_str(fd, size, 2, False) is None
        monkeypatch.undo()
        assert wio.map_str(fd, size, 2, False) == LINES["bmp"][0] * 500
    finally:
        os.close(fd)
    import ctypes

    cached = "".join(["rlm", "-pr\u03a9be"])
    header = sys.getsizeof(cached) - (len(cached) + 1) * 2
    assert wio._extra_header_fields(cached, header) == {}
    ctypes.pythonapi.PyUnicode_AsUTF8.restype = ctypes.c_char_p
    ctypes.pythonapi.PyUnicode_AsUTF8(ctypes.py_object(cached))  # a cached UTF-8 copy: a pointer elsewhere
    assert wio._extra_header_fields(cached, header) is None

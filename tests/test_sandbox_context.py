"""Context delivery: one read-only, content-addressed file per context, and its metadata."""

# ruff: noqa: F811 - pytest fixtures imported from tests.sandbox_helpers are test arguments

from __future__ import annotations

import hashlib
import json
import os
import stat
import time

import pytest

from rlm_env.sandbox import prepare_context
from rlm_env.sandbox.context import ITEM_LENGTHS_CAP
from rlm_env.tasks.base import ContextDir, ContextFile
from tests.sandbox_helpers import sandboxes  # noqa: F401 (fixture)


def test_str_context_metadata_and_file(tmp_path):
    text = "héllo wörld\n" * 100
    pc = prepare_context(text, store_dir=tmp_path, prefix_chars=7)
    data = pc.path.read_bytes()
    assert data == text.encode("utf-8") and pc.size_bytes == len(data)
    assert pc.sha256 == hashlib.sha256(data).hexdigest() and pc.path.name == pc.sha256 + ".txt"
    assert (pc.kind, pc.type_name, pc.length, pc.prefix, pc.item_lengths) == (
        "text",
        "str",
        1200,
        "héllo w",
        [],
    )
    assert stat.S_IMODE(pc.path.stat().st_mode) == 0o444


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
    src.write_bytes("ünïcode ".encode() * 1000 + b"\xff")
    pc = prepare_context(ContextFile(src, "text"), store_dir=tmp_path / "store", prefix_chars=10)
    assert pc.path == src and not (tmp_path / "store").exists()
    assert pc.length == 8001 and pc.prefix == "ünïcode ün" and pc.size_bytes == src.stat().st_size
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


async def test_large_ascii_context_shares_the_page_cache(sandboxes, tmp_path):
    text = "The quick brown fox jumps over the lazy dog. " * 200_000  # 9 MB of ASCII
    pc = prepare_context(text, store_dir=tmp_path)
    assert pc.ascii
    empty = await sandboxes(context="tiny")
    await empty.run_cell("len(context)")
    boxes = [await sandboxes(context=pc) for _ in range(5)]
    r = await boxes[0].run_cell(
        "import hashlib, re\n"
        "(hashlib.sha256(context.encode()).hexdigest(), len(context), context[:9], context.count('fox'),"
        " len(re.findall('lazy dog', context)), type(context).__name__, (context + '!')[-2:])"
    )
    assert r.output == f"({pc.sha256!r}, {len(text)}, 'The quick', 200000, 200000, 'str', ' !')\n", r
    for sb in boxes[1:]:  # these only read every page (the copies above would blur the measure)
        assert sb.layers["context_shared"]
        assert (await sb.run_cell("context.count('fox')")).output == "200000\n"
    extra = sum(_pss(sb.pids()) for sb in boxes[1:]) - 4 * _pss(empty.pids())
    assert extra < 1.5 * pc.size_bytes, (extra, pc.size_bytes)  # four episodes, about one copy


async def test_non_ascii_context_is_decoded_privately(sandboxes, tmp_path):
    text = "héllo wörld " * 10_000
    sb = await sandboxes(context=prepare_context(text, store_dir=tmp_path))
    assert not sb.layers["context_shared"]
    assert (await sb.run_cell("len(context), context[:5]")).output == "(120000, 'héllo')\n"

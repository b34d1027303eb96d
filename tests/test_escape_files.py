"""Escape suite, part: the file system: host files, writes, the context, /dev and mounts.

Escape attempts against the real bubblewrap sandbox.

Every test plays one attack as model-written code, asserts that it failed, and asserts that the
host is intact: the host process and a canary host process are alive, the host still forks, and
the sandbox (restarted if need be) still answers. Each claim of the threat model in
`rlm_env.sandbox` is backed by at least one test here (named in the docstring's claims).
"""

# ruff: noqa: F811 - pytest fixtures imported from tests.sandbox_helpers are test arguments

from __future__ import annotations

import os
from pathlib import Path

import pytest

from rlm_env.sandbox import ContextDir, prepare_context
from tests.sandbox_helpers import (  # noqa: F401 - the fixtures are used as test arguments
    FAST,
    RecordingHandler,
    alive,
    assert_host_intact,
    canary,
    needs_bwrap,
    pids_of_uid,
    sandboxes,
    wait_gone,
)

pytestmark = needs_bwrap
THIS_FILE = str(Path(__file__).resolve())
REPO_ROOT = str(Path(__file__).resolve().parents[1])


# ---- the file system ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    ["/etc/shadow", "/etc/passwd", "/etc/hostname", f"{REPO_ROOT}/pyproject.toml", THIS_FILE,
     "/root/.bashrc", "/usr/bin/env", "/bin/sh", "/proc/1/root/etc/shadow"],
)  # fmt: skip
async def test_cannot_read_host_files(sandboxes, canary, path):
    sb = await sandboxes()
    r = await sb.run_cell(f"data = open({path!r}, 'rb').read()\nlen(data)")
    assert r.error is not None and ("FileNotFoundError" in r.error or "PermissionError" in r.error), r
    await assert_host_intact(sb, canary)


async def test_cannot_read_a_planted_secret(sandboxes, canary, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("TOKEN-3f9a1c")
    sb = await sandboxes()
    r = await sb.run_cell(
        f"import os\nprint(os.path.exists({str(tmp_path)!r}), os.path.exists({str(secret)!r}))\n"
        "hits = []\nfor d, dirs, files in os.walk('/'):\n"
        "    if d == '/': dirs[:] = [x for x in dirs if x not in ('proc', 'usr', 'opt', 'dev')]  # libs; ptmx blocks\n"
        "    for f in files:\n"
        "        try:\n"
        "            if b'TOKEN-3f9a1c' in open(os.path.join(d, f), 'rb').read(1 << 20): hits.append(f)\n"
        "        except OSError: pass\nhits"
    )
    assert r.output == "False False\n[]\n", r
    await assert_host_intact(sb, canary)


async def test_home_and_work_dirs_are_absent(sandboxes, canary):
    sb = await sandboxes()
    r = await sb.run_cell(
        "import os\n[os.path.expanduser('~'), sorted(os.listdir('/')), os.path.exists('/root'),"
        " os.path.exists('/home'), os.path.exists('/work'), os.path.exists('/usr/bin')]"
    )
    assert (
        r.output
        == "['/tmp', ['dev', 'etc', 'lib', 'lib64', 'opt', 'proc', 'tmp', 'usr'], False, False, False, False]\n"
    )
    await assert_host_intact(sb, canary)


@pytest.mark.parametrize(
    "path",
    ["/pwned", "/usr/lib/pwned", "/opt/rlm/python/lib/pwned", "/opt/rlm/site-packages/pwned", "/etc/pwned",
     "/dev/pwned", "/dev/shm/pwned", "/proc/sys/kernel/hostname", "/etc/ld.so.cache"],
)  # fmt: skip
async def test_cannot_write_outside_tmp(sandboxes, canary, path):
    sb = await sandboxes()
    r = await sb.run_cell(f"open({path!r}, 'w').write('x')")
    assert r.error is not None and any(
        e in r.error for e in ("OSError", "PermissionError", "FileNotFoundError")
    ), r
    assert not os.path.exists("/usr/lib/pwned") and not os.path.exists("/pwned")
    await assert_host_intact(sb, canary)


async def test_tmp_is_private_per_sandbox(sandboxes, canary):
    a, b = await sandboxes(), await sandboxes()
    assert (
        await a.run_cell("open('/tmp/marker-7c1', 'w').write('a')\nimport os; os.listdir('/tmp')")
    ).output == ("['marker-7c1']\n")
    assert (await b.run_cell("import os; os.listdir('/tmp')")).output == "[]\n"
    assert not os.path.exists("/tmp/marker-7c1")
    await assert_host_intact(a, canary)


async def test_tmp_and_file_sizes_are_bounded(sandboxes, canary):
    sb = await sandboxes(config=FAST.model_copy(update={"tmp_size_mb": 4, "max_file_size_mb": 2}))
    r = await sb.run_cell("open('/tmp/big', 'wb').write(b'x' * (3 << 20))")
    assert "File too large" in r.error, r
    r = await sb.run_cell(
        "n = 0\ntry:\n    while True:\n        open(f'/tmp/f{n}', 'wb').write(b'x' * (1 << 20)); n += 1\n"
        "except OSError as e:\n    print(n, e.strerror)"
    )
    assert "No space left on device" in r.output and int(r.output.split()[0]) <= 4, r
    await assert_host_intact(sb, canary)


async def test_context_file_cannot_be_modified(sandboxes, canary, tmp_path):
    pc = prepare_context("ORIGINAL CONTEXT", store_dir=tmp_path / "store")
    before = pc.path.read_bytes()
    sb = await sandboxes(context=pc)
    r = await sb.run_cell(
        "import os, mmap\nresults = []\n"
        "for fd in map(int, os.listdir('/proc/self/fd')):\n"
        "    target = os.readlink(f'/proc/self/fd/{fd}') if os.path.exists(f'/proc/self/fd/{fd}') else ''\n"
        "    for attack in ('write', 'reopen', 'mmap', 'fchmod'):\n"
        "        try:\n"
        "            if attack == 'write': os.write(fd, b'')\n"
        "            if attack == 'reopen': os.close(os.open(f'/proc/self/fd/{fd}', os.O_RDWR))\n"
        "            if attack == 'mmap': mmap.mmap(fd, 1, prot=mmap.PROT_WRITE)\n"
        "            if attack == 'fchmod': os.fchmod(fd, 0o666)\n"
        "            results.append((fd, target, attack, 'ok'))\n"
        "        except OSError: pass\n"
        f"print([r for r in results if '{pc.sha256}' in r[1]])\n"
        f"print(os.path.exists({str(pc.path)!r}), os.path.exists({str(pc.path.parent)!r}))\n"
        f"open({str(pc.path)!r}, 'w')"
    )
    assert r.output == "[]\nFalse False\n" and "FileNotFoundError" in r.error, r
    assert pc.path.read_bytes() == before and oct(pc.path.stat().st_mode)[-3:] == "444"
    await assert_host_intact(sb, canary)


@pytest.mark.parametrize(
    "original, written",
    [("A", "B"), ("\u00e9", "\u00e8"), ("\u03a9", "\u03a8"), ("\U0001f600", "\U0001f601")],
    ids=["ascii", "latin1", "ucs2", "ucs4"],
)
async def test_writing_into_a_shared_context_str_stays_private(
    sandboxes, canary, tmp_path, original, written
):
    n = 1 << 18
    pc = prepare_context(original * n, store_dir=tmp_path / "store")
    before = pc.path.read_bytes()
    a, b = await sandboxes(context=pc), await sandboxes(context=pc)
    assert a.layers["context_shared"] and b.layers["context_shared"]
    r = await a.run_cell(  # overwrite every character of the mapped str, in place, in its own layout
        "import ctypes, sys\n"
        f"w = {pc.char_width}\n"
        "data = id(context) + sys.getsizeof(context) - (len(context) + 1) * w\n"
        f"new = ({written!r} * len(context)).encode({'latin-1' if pc.char_width == 1 else f'utf-{8 * pc.char_width}-le'!r})\n"
        "ctypes.memmove(data, new, len(new))\n"
        f"context[:3] == {written * 3!r}, context.count({written!r})"
    )
    assert r.output == f"(True, {n})\n", r  # its own copy-on-write pages
    r = await b.run_cell(
        f"context[:3] == {original * 3!r}, context.count({written!r}), context.count({original!r})"
    )
    assert r.output == f"(True, 0, {n})\n", r
    assert pc.path.read_bytes() == before
    await assert_host_intact(b, canary)


async def test_cannot_find_another_episodes_context(sandboxes, canary, tmp_path):
    store = tmp_path / "store"
    first = prepare_context("SECRET-OF-EPISODE-A " * 10, store_dir=store)
    a = await sandboxes(context=first)
    b = await sandboxes(context=prepare_context("episode b", store_dir=store))
    r = await b.run_cell(
        "import os\nhits = []\n"
        "for d in ('/tmp', '/dev/shm', '/etc', '/run', '/var'):\n"
        "    for root, _, files in os.walk(d):\n"
        "        for f in files:\n"
        "            try:\n"
        "                if b'SECRET-OF-EPISODE-A' in open(os.path.join(root, f), 'rb').read(1 << 16): hits.append(f)\n"
        "            except OSError: pass\n"
        "for pid in [p for p in os.listdir('/proc') if p.isdigit()]:\n"
        "    for fd in os.listdir(f'/proc/{pid}/fd') if os.access(f'/proc/{pid}/fd', os.R_OK) else []:\n"
        "        try: hits.append(os.readlink(f'/proc/{pid}/fd/{fd}'))\n"
        "        except OSError: pass\n"
        f"hits = [h for h in hits if 'SECRET' in h or {first.sha256!r} in h or 'rlm-env-contexts' in h]\n"
        f"hits, os.path.exists({str(first.path)!r}), os.path.exists('/dev/shm/rlm-env-contexts')"
    )
    assert r.output == "([], False, False)\n", r
    assert "SECRET-OF-EPISODE-A" in (await a.run_cell("context")).output
    await assert_host_intact(b, canary)


async def test_symlinks_in_a_context_dir_are_not_followed(sandboxes, canary, tmp_path):
    root = tmp_path / "ctx"
    root.mkdir()
    (root / "note.txt").write_text("fine")
    (root / "passwd").symlink_to("/etc/passwd")
    (root / "etc").symlink_to("/etc", target_is_directory=True)
    pc = prepare_context(ContextDir(root), store_dir=tmp_path / "store")
    sb = await sandboxes(context=pc)
    r = await sb.run_cell("sorted(context), any('root:' in v for v in context.values())")
    assert r.output == "(['note.txt'], False)\n" and len(pc.skipped) == 2
    await assert_host_intact(sb, canary)


async def test_dev_is_minimal(sandboxes, canary):
    sb = await sandboxes()
    r = await sb.run_cell(
        "import os\nextra = set(os.listdir('/dev')) - {'null', 'zero', 'full', 'random', 'urandom', 'tty', "
        "'ptmx', 'pts', 'shm', 'fd', 'stdin', 'stdout', 'stderr', 'core'}\n"
        "print(sorted(extra), [os.path.exists(p) for p in ('/dev/sda', '/dev/mem', '/dev/kmsg', '/dev/vda')])"
    )
    assert r.output == "[] [False, False, False, False]\n", r
    await assert_host_intact(sb, canary)


async def test_host_mounts_are_invisible(sandboxes, canary):
    sb = await sandboxes()
    r = await sb.run_cell(
        "points = [l.split()[4] for l in open('/proc/self/mountinfo')]\n"
        "sorted(p for p in points if p.startswith(('/work', '/root', '/home', '/mnt', '/media', '/srv', '/var')))"
    )
    assert r.output == "[]\n", r
    r = await sb.run_cell(
        "import os; sorted(os.listdir('/opt/rlm')), os.path.exists('/opt/rlm/python/bin/pip')"
    )
    assert r.output == "(['python', 'site-packages'], False)\n", r  # sorted below
    await assert_host_intact(sb, canary)

"""Context files that end: one-off contexts removed when their sandbox closes, stale ones swept.

`prepare_context` writes each context once to a content-addressed file in a store directory
(/dev/shm/rlm-env-contexts by default, so host memory) and never removes it, which is right for a
task's context that many episodes share and wrong for the one-off contexts of `rlm_query`
children: 284 such files had piled up on one machine. So:

- every `Sandbox` holds its context file while it is open (a count per path, in this process)
  and refreshes its mtime; `Sandbox.discard_context_on_close = True` (set by an episode for a
  child's context) removes the file when the last sandbox of this process using it closes;
- `sweep_stale()` runs once per host process, at its first sandbox: store files not used for
  `STALE_AFTER_S` and half-written `.partial-*` files are removed.

Only store files are ever removed: names `<sha256>.txt` / `<sha256>.json` matching the
context's own hash. A `ContextFile` (the user's own file, used in place) is never touched.
Not guaranteed: another host process on the same store may be about to open a file that this
one removes (a child context shared by two processes, or a store file unused for hours); it
then fails to start that sandbox. Content-addressed one-off prompts make that rare.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import os
import re
import time
from pathlib import Path
from typing import Any

STALE_AFTER_S = 6 * 3600.0
_STORE_NAME = re.compile(r"[0-9a-f]{64}\.(txt|json)")
_holders: collections.Counter[str] = collections.Counter()


def is_store_file(context: Any) -> bool:
    """True for a file `prepare_context` wrote (and so may remove), False for a user's file."""
    path = Path(context.path)
    return bool(_STORE_NAME.fullmatch(path.name)) and path.name.startswith(str(context.sha256))


def hold(context: Any) -> None:
    """A sandbox of this process uses `context` from now on."""
    _holders[str(context.path)] += 1
    if is_store_file(context):
        with contextlib.suppress(OSError):
            os.utime(context.path)  # in use: not stale


def release(context: Any, discard: bool) -> bool:
    """That sandbox closed; remove the file if asked and no other sandbox here uses it."""
    key = str(context.path)
    _holders[key] -= 1
    if _holders[key] > 0:
        return False
    del _holders[key]
    if not discard or not is_store_file(context):
        return False
    with contextlib.suppress(FileNotFoundError):
        os.unlink(context.path)
    return True


def sweep_stale(store: Path | str, max_age_s: float = STALE_AFTER_S) -> int:
    """Remove store files unused for `max_age_s` (and stale partial writes); how many."""
    removed, now = 0, time.time()
    with contextlib.suppress(OSError):
        for entry in os.scandir(store):
            name = entry.name
            if not (_STORE_NAME.fullmatch(name) or name.startswith(".partial-")):
                continue
            if str(Path(store) / name) in _holders:
                continue
            with contextlib.suppress(OSError):
                st = entry.stat(follow_symlinks=False)
                if now - max(st.st_mtime, st.st_atime) > max_age_s:
                    os.unlink(entry.path)
                    removed += 1
    return removed


@functools.cache
def sweep_default_store_once() -> int:
    """The start-of-process sweep of the default store."""
    from rlm_env.sandbox.context import default_store_dir

    return sweep_stale(default_store_dir())

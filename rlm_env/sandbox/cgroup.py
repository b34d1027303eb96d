"""A memory cgroup per sandbox: one bound on all the memory a sandbox makes the machine spend.

RLIMIT_AS counts the worker's address space only. Its private /tmp (tmpfs pages), the kernel
objects it creates (300k empty files in /tmp once took 375 MB of inodes and dentries), pipe and
socket buffers, page tables: none of that is address space, all of it is charged to the memory
cgroup of the process that caused it. So each bwrap worker is moved, right after its hello and
before any user code runs, into a cgroup of its own under the host's memory cgroup, limited to
`memory_limit_mb + tmp_size_mb + cgroup_headroom_mb`. Past that limit the kernel's OOM killer
kills the worker inside that cgroup (the host sees it die by SIGKILL and restarts it); nothing
outside the cgroup is touched. (memfd, SysV and POSIX IPC memory is refused by seccomp anyway.)

Both hierarchies are handled: cgroup v1 (`memory` controller mounted on its own, as on this
project's machines) and v2 (the unified tree, where the memory controller must be enabled in
the host cgroup's subtree_control, which the kernel only allows when the host cgroup has no
processes of its own; most often it has, so v2 works under a delegated, empty parent).

Where no cgroup can be created (not root, read-only /sys/fs/cgroup, no memory controller) the
sandbox runs without one, `Sandbox.mode_warning` says so and what is then not bounded, unless the
config says "required". Cgroups are named `rlm-sb-<host pid>-<n>`; one whose host pid is dead
and that holds no process is removed the next time a host starts a sandbox (a crashed host's).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import os
import time
from pathlib import Path

_PREFIX = "rlm-sb-"
_counter = itertools.count()


@functools.cache
def memory_parent() -> tuple[Path | None, str, str]:
    """(directory to create sandbox cgroups in, "v1" or "v2", why not) for this host process."""
    if not os.path.isdir("/sys/fs/cgroup"):
        return None, "", "there is no /sys/fs/cgroup"
    if os.geteuid() != 0:
        return None, "", "the host does not run as root"
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError as e:
        return None, "", f"cannot read /proc/self/cgroup ({e})"
    for line in lines:  # v1: "4:memory:/path"
        _n, controllers, path = line.split(":", 2)
        if "memory" in controllers.split(","):
            base = Path("/sys/fs/cgroup/memory") / path.lstrip("/")
            return _usable(base, "v1")
    for line in lines:  # v2: "0::/path"
        if line.startswith("0::"):
            root = Path("/sys/fs/cgroup")
            if not (root / "cgroup.controllers").exists():
                root = Path("/sys/fs/cgroup/unified")
            base = root / line[3:].lstrip("/")
            try:
                if "memory" not in (base / "cgroup.controllers").read_text().split():
                    return None, "", "the cgroup v2 memory controller is not available to this host"
            except OSError as e:
                return None, "", f"cannot read the host's cgroup ({e})"
            return _usable(base, "v2")
    return None, "", "no memory cgroup found for this host"


def _usable(base: Path, version: str) -> tuple[Path | None, str, str]:
    probe = base / f"{_PREFIX}probe-{os.getpid()}"
    try:
        probe.mkdir(exist_ok=True)
        limit = probe / ("memory.limit_in_bytes" if version == "v1" else "memory.max")
        if not limit.exists():
            raise OSError(f"{limit.name} is missing (the memory controller is not enabled there)")
        limit.write_text(str(64 << 20))
    except OSError as e:
        with contextlib.suppress(OSError):
            probe.rmdir()
        return None, "", f"cannot create a memory cgroup under {base} ({e.strerror or e})"
    with contextlib.suppress(OSError):
        probe.rmdir()
    _sweep(base)
    return base, version, ""


def _sweep(base: Path) -> None:
    """Remove sandbox cgroups left by hosts that are gone (empty ones only)."""
    with contextlib.suppress(OSError):
        for d in base.iterdir():
            if not d.name.startswith(_PREFIX) or not d.is_dir():
                continue
            try:
                pid = int(d.name[len(_PREFIX) :].split("-")[0])
            except ValueError:
                continue
            if pid != os.getpid() and not os.path.exists(f"/proc/{pid}"):
                with contextlib.suppress(OSError):
                    d.rmdir()


def unavailable_reason() -> str:
    """Why sandboxes get no memory cgroup here ("" when they do)."""
    return memory_parent()[2]


class MemoryCgroup:
    """One sandbox's memory cgroup; `add(pid)` moves a process in, `remove()` deletes it."""

    def __init__(self, path: Path, version: str):
        self.path, self.version = path, version

    @classmethod
    def create(cls, limit_bytes: int) -> MemoryCgroup:
        base, version, why = memory_parent()
        if base is None:
            raise OSError(why)
        path = base / f"{_PREFIX}{os.getpid()}-{next(_counter)}"
        path.mkdir()
        self = cls(path, version)
        try:
            if version == "v1":
                (path / "memory.limit_in_bytes").write_text(str(limit_bytes))
                with contextlib.suppress(OSError):  # swap must not be a way around the limit
                    (path / "memory.memsw.limit_in_bytes").write_text(str(limit_bytes))
            else:
                (path / "memory.max").write_text(str(limit_bytes))
                with contextlib.suppress(OSError):
                    (path / "memory.swap.max").write_text("0")
        except OSError:
            self.try_remove()
            raise
        return self

    def add(self, pid: int) -> None:
        (self.path / "cgroup.procs").write_text(str(pid))

    def pids(self) -> list[int]:
        try:
            return [int(p) for p in (self.path / "cgroup.procs").read_text().split()]
        except (OSError, ValueError):
            return []

    def oom_kills(self) -> int:
        """How many times the kernel killed a process of this cgroup for memory."""
        name = "memory.oom_control" if self.version == "v1" else "memory.events"
        try:
            for line in (self.path / name).read_text().splitlines():
                key, _, value = line.partition(" ")
                if key == "oom_kill":
                    return int(value)
        except (OSError, ValueError):
            pass
        return 0

    def try_remove(self) -> bool:
        try:
            self.path.rmdir()
        except FileNotFoundError:
            pass
        except OSError:
            return False
        return True

    async def remove(self, wait_s: float = 2.0) -> bool:
        """rmdir once its processes are gone (they may still be exiting); True if removed."""
        deadline = time.monotonic() + wait_s
        while not self.try_remove():
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.02)
        return True

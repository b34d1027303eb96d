"""One worker process as the host sees it: start it, talk to it, hand it its context, kill it.

The worker's fd 0 is /dev/null; its fd 1 and 2 go to one pipe that a host task drains without
pause into a small ring, so a flood can never block the worker on a full pipe nor grow host
memory, and the tail is there to show if the worker dies (e.g. a segfault's traceback).

Killing is total. In bwrap mode bwrap's init is the init of the pid namespace and the worker
its child: SIGKILL to that init (by pidfd, so never to a recycled pid) makes the kernel kill
everything left in the namespace, and bwrap reaps it and exits. Then the process group of bwrap
(or of the rlimit worker) gets SIGKILL, and, as a last net, every process still running under
the sandbox's own uid (a uid that belongs to nothing else on the host); then its memory cgroup
is removed. Were the host itself to die, --die-with-parent kills bwrap, bwrap's death kills its
init (same uid, so the kernel delivers it), and the kernel kills the namespace: no GIL needed.

Every wait on the worker has a deadline: its hello and context load (`startup_timeout_s`),
each write (`io_timeout_s`: a worker that stops reading is a protocol violation, never a hang),
each reply (the caller's deadline), its exit after a kill (bounded waits).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import fcntl
import logging
import os
import shutil
import signal
import socket
import sys
import termios
from pathlib import Path
from typing import Any

from rlm_env.sandbox.cgroup import MemoryCgroup
from rlm_env.sandbox.config import SandboxConfig
from rlm_env.sandbox.context import PreparedContext
from rlm_env.sandbox.launch import LaunchSpec, build_launch, release_uid
from rlm_env.sandbox.protocol import (
    MAX_FRAME_ITEMS,
    ProtocolViolation,
    WorkerDied,
    encode_frame,
    read_frame,
    send_with_fd,
)

log = logging.getLogger(__name__)

RING_BYTES = 64 * 1024


class SandboxStartError(RuntimeError):
    """A worker could not be started or could not load its context (an infrastructure failure)."""


class WorkerProcess:
    """A started worker that has said hello; `load_context` makes it ready for cells."""

    def __init__(self, proc: asyncio.subprocess.Process, sock: socket.socket, spec: LaunchSpec, mode: str,
                 config: SandboxConfig | None = None):  # fmt: skip
        self.proc, self.sock, self.spec, self.mode = proc, sock, spec, mode
        config = config or SandboxConfig()
        self.io_timeout_s = config.io_timeout_s
        self.max_items = max(MAX_FRAME_ITEMS, config.answer_max_bytes // 2 + 10_000)
        # A reply's largest honest form: the answer (or a looked-up value) and the output, each
        # character at most 12 bytes once escaped (a surrogate pair), plus the error and keys.
        reply = 12 * (config.answer_max_bytes + config.max_output_chars) + (1 << 20)
        self.op_max_bytes = {"result": reply, "lookup": reply, "vars": 16 << 20, "hello": 1 << 20,
                             "ready": 1 << 20, "init_failed": 1 << 20}  # fmt: skip
        self.cgroup: MemoryCgroup | None = None
        self.reader: asyncio.StreamReader
        self.writer: asyncio.StreamWriter
        self.hello: dict[str, Any] = {}
        self._ring: collections.deque[bytes] = collections.deque()
        self._ring_len = 0
        self._drain_task: asyncio.Task | None = None
        self.context_shared = False
        self._ns_init: int | None = None  # pidfd of the pid namespace's init (bwrap's)
        self.killed = False

    @property
    def pid(self) -> int:
        """Host pid of the outermost process (bwrap, or the worker itself in rlimit mode)."""
        return self.proc.pid

    @property
    def uid(self) -> int | None:
        return self.spec.uid

    @classmethod
    async def spawn(cls, config: SandboxConfig, mode: str) -> WorkerProcess:
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        spec: LaunchSpec | None = None
        try:
            spec = build_launch(config, mode, child.fileno())
            proc = await asyncio.create_subprocess_exec(
                *spec.argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                pass_fds=spec.pass_fds,
                start_new_session=True,
                env=spec.env,
                cwd=spec.cwd,
            )
        except BaseException:
            parent.close()
            if spec is not None:
                release_uid(spec.uid)
                if spec.scratch_dir:
                    shutil.rmtree(spec.scratch_dir, ignore_errors=True)
            raise
        finally:
            child.close()
        parent.setblocking(False)
        self = cls(proc, parent, spec, mode, config)
        try:
            self.reader, self.writer = await asyncio.open_unix_connection(sock=parent)
            self._drain_task = asyncio.create_task(self._drain())
            try:
                hello = await asyncio.wait_for(self.recv(), config.startup_timeout_s)
            except (WorkerDied, ProtocolViolation, TimeoutError) as e:
                await asyncio.sleep(0.05)  # let the drain catch the worker's last words
                raise SandboxStartError(f"the sandbox worker failed to start ({e}): {self.tail()}") from None
            if hello.get("op") != "hello":
                raise SandboxStartError(f"the sandbox worker sent {hello.get('op')!r} instead of hello")
            # The worker refuses to run without its layers; check anyway (before any user code).
            if spec.uid is not None and hello.get("uid") != spec.uid:
                raise SandboxStartError(f"the sandbox worker runs as uid {hello.get('uid')}, not {spec.uid}")
            if spec.seccomp and hello.get("seccomp") is not True:
                raise SandboxStartError("the sandbox worker has no seccomp filter although one was required")
            self.hello = hello
            if mode == "bwrap":
                self._ns_init = _pidfd_of_only_child(proc.pid)
                self._enter_cgroup(config)
        except BaseException:
            await self.kill()
            raise
        return self

    def _enter_cgroup(self, config: SandboxConfig) -> None:
        """Move bwrap's init and the worker (no user code has run yet) into a memory cgroup."""
        if config.memory_cgroup == "off":
            return
        limit = (config.memory_limit_mb + config.tmp_size_mb + config.cgroup_headroom_mb) << 20
        try:
            self.cgroup = MemoryCgroup.create(limit)
            for pid in self.pids()[1:]:  # not the outer bwrap: it only waits
                self.cgroup.add(pid)
        except OSError as e:
            if config.memory_cgroup == "required":
                raise SandboxStartError(f"could not put the sandbox in a memory cgroup ({e})") from None
            log.warning("sandbox runs without its memory cgroup: %s", e)

    async def _drain(self) -> None:
        assert self.proc.stdout is not None
        with contextlib.suppress(Exception):
            while chunk := await self.proc.stdout.read(65536):
                self._ring.append(chunk)
                self._ring_len += len(chunk)
                while self._ring_len - len(self._ring[0]) >= RING_BYTES:
                    self._ring_len -= len(self._ring.popleft())

    def tail(self, chars: int = 2000) -> str:
        """The end of what the worker wrote to its fd 1 and 2 (outside cells' captured output)."""
        text = b"".join(self._ring)[-chars * 4 :].decode("utf-8", errors="replace")
        return text[-chars:].strip()

    async def send(self, msg: dict[str, Any]) -> None:
        """Write one frame; a worker that does not read it within `io_timeout_s` broke the protocol."""
        try:
            self.writer.write(encode_frame(msg))
            transport = self.writer.transport
            if transport.get_write_buffer_size() == 0 and not transport.is_closing():
                return  # all of it is in the socket already: nothing to wait for (the common case)
            await asyncio.wait_for(self.writer.drain(), self.io_timeout_s)
        except TimeoutError:
            raise ProtocolViolation(
                f"the worker stopped reading the host's frames (nothing read for {self.io_timeout_s:g} s; "
                "e.g. sub-call requests sent without waiting for their replies)"
            ) from None
        except (ConnectionError, RuntimeError) as e:
            raise WorkerDied(f"could not write to the worker ({e})") from None

    def unread_bytes(self) -> int:
        """Bytes the host wrote that the worker has not read yet (SIOCOUTQ; 0 if unknown)."""
        try:
            buf = fcntl.ioctl(self.sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0")
        except OSError:
            return 0
        return int.from_bytes(buf, sys.byteorder, signed=True)

    async def recv(self) -> dict[str, Any]:
        return await read_frame(self.reader, max_items=self.max_items, op_max_bytes=self.op_max_bytes)

    async def load_context(
        self,
        context: PreparedContext,
        timeout: float,
        more: tuple[PreparedContext, ...] = (),
        tools: list[dict[str, str]] | None = None,
    ) -> float:
        """Pass the context file's descriptor (and one per further context, in one message: the
        worker binds them as context_1 ...; and the custom tools' names and descriptions, for
        the REPL's stubs); returns the worker's load time in seconds."""
        fds: list[int] = []
        try:
            for c in (context, *more):
                fds.append(os.open(c.path, os.O_RDONLY | os.O_CLOEXEC))
            specs = [{"kind": c.kind, "ascii": c.ascii, "width": c.char_width} for c in (context, *more)]
            frame = encode_frame({"op": "init", **specs[0], "more": specs[1:], "tools": tools or []})
            send_with_fd(self.sock, frame, fds)
        except OSError as e:
            raise SandboxStartError(f"could not hand the context to the worker ({e})") from None
        finally:
            for fd in fds:
                os.close(fd)
        try:
            msg = await asyncio.wait_for(self.recv(), timeout)
        except (WorkerDied, ProtocolViolation, TimeoutError) as e:
            await asyncio.sleep(0.05)
            raise SandboxStartError(
                f"the sandbox worker failed to load the context ({e}): {self.tail()}"
            ) from None
        if msg.get("op") == "init_failed":
            raise SandboxStartError(f"the sandbox worker could not load the context: {msg.get('error')}")
        if msg.get("op") != "ready":
            raise SandboxStartError(f"the sandbox worker sent {msg.get('op')!r} instead of ready")
        self.context_shared = msg.get("shared") is True
        load_s = msg.get("load_s")
        return float(load_s) if isinstance(load_s, int | float) else 0.0

    def pids(self) -> list[int]:
        """Host pids of this worker's processes: bwrap (or the worker) and all its descendants."""
        out, todo = [], [self.proc.pid]
        while todo:
            pid = todo.pop()
            out.append(pid)
            try:
                for tid in os.listdir(f"/proc/{pid}/task"):
                    todo += [int(c) for c in Path(f"/proc/{pid}/task/{tid}/children").read_text().split()]
            except (OSError, ValueError):
                continue
        return out

    @property
    def returncode(self) -> int | None:
        return self.proc.returncode

    async def exit_code(self, wait_s: float = 1.0) -> int | None:
        """The exit status once the process is gone (None if it does not end within `wait_s`)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.proc.wait(), wait_s)
        return self.proc.returncode

    async def kill(self) -> None:
        """SIGKILL everything that belongs to this worker and reap it. Idempotent."""
        if self.killed:
            return
        self.killed = True
        if self._ns_init is not None:
            # The namespace's init first: the kernel then kills everything inside (the worker),
            # and bwrap reaps it and exits. (Killing bwrap first would orphan the worker to the
            # host's pid 1, which is not always quick to reap zombies.)
            with contextlib.suppress(OSError):
                signal.pidfd_send_signal(self._ns_init, signal.SIGKILL)
            os.close(self._ns_init)
            self._ns_init = None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.proc.wait(), 1.0)
        # Then the process group. Not Process.kill(): it would poll() first and could reap the
        # child behind asyncio's child watcher. start_new_session made the pgid equal the pid.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(Exception):
            self.writer.close()
        self.sock.close()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.proc.wait(), 10)
        if self.spec.uid is not None:
            kill_uid(self.spec.uid)
            release_uid(self.spec.uid)
        if self.cgroup is not None:
            for pid in self.cgroup.pids():  # (a last net: the namespace is dead by now)
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
            if not await self.cgroup.remove():
                log.warning("could not remove the sandbox cgroup %s", self.cgroup.path)
        if self._drain_task is not None:
            with contextlib.suppress(TimeoutError, asyncio.CancelledError, Exception):
                await asyncio.wait_for(self._drain_task, 0.5)
        if self.spec.scratch_dir:
            shutil.rmtree(self.spec.scratch_dir, ignore_errors=True)


def _pidfd_of_only_child(pid: int) -> int | None:
    """A pidfd for `pid`'s single child (bwrap's init of the namespace), or None if unclear."""
    try:
        kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        if len(kids) != 1 or not hasattr(os, "pidfd_open"):
            return None
        fd = os.pidfd_open(int(kids[0]))
    except (OSError, ValueError):
        return None
    try:  # still that child, not a reused pid? (a pidfd cannot be fooled afterwards)
        stat = Path(f"/proc/{kids[0]}/stat").read_text()
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            return fd
    except (OSError, ValueError, IndexError):
        pass
    os.close(fd)
    return None


def pids_of_uid(uid: int) -> list[int]:
    """Host pids whose real uid is `uid` (a /proc scan; no psutil needed)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/status") as f:
                for line in f:
                    if line.startswith("Uid:"):
                        if int(line.split()[1]) == uid:
                            found.append(int(entry))
                        break
        except (OSError, ValueError, IndexError):
            continue
    return found


def kill_uid(uid: int) -> None:
    """SIGKILL every process of a sandbox-only uid (never 0, never the host's own uid)."""
    if uid in (0, os.getuid()) or not os.path.isdir("/proc"):
        return
    for pid in pids_of_uid(uid):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)

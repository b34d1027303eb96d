"""Escape suite, part: the network, the host protocol, and what is left behind.

The same method as tests/test_escape_files.py: each test plays one attack as model-written code
through the real bwrap sandbox and checks both that it failed and that the host is intact.
"""

# ruff: noqa: F811 - pytest fixtures imported from tests.sandbox_helpers are test arguments

from __future__ import annotations

import os
import pickle
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

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


# ---- network --------------------------------------------------------------------------------


@pytest.mark.parametrize("seccomp", [True, False], ids=["seccomp", "netns-only"])
async def test_no_tcp_to_a_host_listener(sandboxes, canary, seccomp):
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(5)
    listener.setblocking(False)
    port = listener.getsockname()[1]
    try:
        sb = await sandboxes(config=FAST.model_copy(update={"seccomp": seccomp}))
        r = await sb.run_cell(
            f"import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_STREAM)\ns.settimeout(1)\n"
            f"s.connect(('127.0.0.1', {port}))"
        )
        assert r.error is not None and ("PermissionError" in r.error or "ConnectionRefused" in r.error
                                        or "unreachable" in r.error), r  # fmt: skip
        time.sleep(0.1)
        with pytest.raises(BlockingIOError):
            listener.accept()
        await assert_host_intact(sb, canary)
    finally:
        listener.close()


async def test_no_dns_and_no_inet6(sandboxes, canary):
    sb = await sandboxes()
    r = await sb.run_cell("import socket\nsocket.getaddrinfo('pypi.org', 443)")
    assert "gaierror" in r.error or "PermissionError" in r.error, r
    r = await sb.run_cell("import socket\nsocket.socket(socket.AF_INET6, socket.SOCK_DGRAM)")
    assert "PermissionError" in r.error
    await assert_host_intact(sb, canary)


async def test_no_abstract_unix_socket_to_the_host(sandboxes, canary):
    name = f"\0rlm-escape-test-{os.getpid()}"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(name)
    listener.listen(1)
    listener.setblocking(False)
    try:
        sb = await sandboxes()
        r = await sb.run_cell(f"import socket\nsocket.socket(socket.AF_UNIX).connect({name!r})")
        assert "ConnectionRefusedError" in r.error or "FileNotFoundError" in r.error, r
        with pytest.raises(BlockingIOError):
            listener.accept()
        await assert_host_intact(sb, canary)
    finally:
        listener.close()


# ---- the protocol ---------------------------------------------------------------------------

FIND_SOCKET = (
    "import os, stat, struct, json\n"
    "def is_sock(fd):\n"
    "    try: return stat.S_ISSOCK(os.fstat(fd).st_mode)\n"
    "    except OSError: return False\n"
    "SOCK = [fd for fd in range(4096) if is_sock(fd)][0]\n"
)


async def test_forged_call_frames_only_reach_the_handler(sandboxes, canary):
    handler = RecordingHandler()
    sb = await sandboxes(handler=handler)
    r = await sb.run_cell(
        FIND_SOCKET + "msg = json.dumps({'op': 'call', 'id': 999, 'fn': 'llm_query', "
        "'args': {'prompt': 'forged', 'sampling': {'api_key': 'x'}}}).encode()\n"
        "os.write(SOCK, struct.pack('>I', len(msg)) + msg)\n"
        "n = struct.unpack('>I', os.read(SOCK, 4))[0]\njson.loads(os.read(SOCK, n))"
    )
    assert r.output == "{'op': 'call_result', 'id': 999, 'ok': True, 'value': 'llm_query:forged'}\n", r
    assert handler.calls == [("llm_query", {"prompt": "forged", "sampling": {"api_key": "x"}})]
    r = await sb.run_cell("llm_query.__globals__['_call']('exec_on_host', {'cmd': 'id'})")  # tampered stub
    assert "SubCallError" in r.error and "unknown sub-call function" in r.error
    assert len(handler.calls) == 1
    await assert_host_intact(sb, canary)


@pytest.mark.parametrize(
    "payload",
    [b"\x00\x00\x00\x05hello", b"\x7f\xff\xff\xff", b"\x00\x00\x00\x02[]", b'\x00\x00\x00\x0b{"op": 5}  '],
    ids=["not-json", "oversized", "not-an-object", "bad-op"],
)
async def test_garbage_frames_are_protocol_violations(sandboxes, canary, payload):
    sb = await sandboxes()
    t0 = time.monotonic()
    r = await sb.run_cell(FIND_SOCKET + f"os.write(SOCK, {payload!r})\nimport time\ntime.sleep(5)")
    assert time.monotonic() - t0 < 2
    assert r.worker_restarted and "ProtocolViolation" in r.error, r
    await assert_host_intact(sb, canary)


class _Exploit:
    """Unpickling this on the host would create the marker file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


async def test_pickle_and_marshal_payloads_are_never_loaded(sandboxes, canary, tmp_path):
    marker = tmp_path / "UNPICKLED"
    payloads = [pickle.dumps(_Exploit(marker), protocol=p) for p in (0, 2, 5)]
    payloads.append(b"\xe3" + bytes(40))  # a marshal code-object header
    for blob in payloads:
        sb = await sandboxes()
        frame = len(blob).to_bytes(4, "big") + blob
        r = await sb.run_cell(FIND_SOCKET + f"os.write(SOCK, {frame!r})\nimport time\ntime.sleep(5)")
        assert r.worker_restarted and "ProtocolViolation" in r.error, r
        await assert_host_intact(sb, canary)
    assert not marker.exists()


async def test_flooding_stdout_is_bounded(sandboxes, canary):
    sb = await sandboxes(config=FAST.model_copy(update={"cell_timeout_s": 0.5}))
    r = await sb.run_cell("while True:\n    print('spam' * 1000)")
    assert r.timed_out and r.truncated and len(r.output) < 20_200
    r = await sb.run_cell("import os\nwhile True:\n    os.write(1, b'x' * 65536)")  # under the capture
    assert r.timed_out
    assert sb.worker._ring_len <= 64 * 1024 + 65536 and len(sb.worker.tail()) <= 2000
    await assert_host_intact(sb, canary)


async def test_exploding_answer_object(sandboxes, canary):
    sb = await sandboxes()
    r = await sb.run_cell(
        "class Evil:\n    def __repr__(self): raise SystemExit('repr bomb')\n"
        "    def __str__(self): return 'x' * 10 ** 8\n"
        "answer['content'] = Evil()\nanswer['ready'] = True"
    )
    assert not r.answer.ready and "too large" in r.answer.error
    assert await sb.lookup_variable("answer") == (False, None)
    await assert_host_intact(sb, canary)


# ---- leaving something behind ---------------------------------------------------------------


@pytest.mark.parametrize("how", ["thread", "fork", "double-fork", "setsid"])
async def test_nothing_survives_close(sandboxes, canary, how):
    sb = await sandboxes(config=FAST.model_copy(update={"seccomp": False}))
    spawn = {
        "thread": "threading.Thread(target=time.sleep, args=(300,)).start()",
        "fork": "if os.fork() == 0:\n    time.sleep(300)",
        "double-fork": "if os.fork() == 0:\n    if os.fork() == 0:\n        time.sleep(300)\n    os._exit(0)",
        "setsid": "if os.fork() == 0:\n    os.setsid()\n    time.sleep(300)",
    }[how]
    r = await sb.run_cell(f"import os, time, threading\n{spawn}\ntime.sleep(0.1)")
    assert r.error is None
    await assert_host_intact(sb, canary)
    uid, pid = sb.worker.uid, sb.worker.pid
    before = pids_of_uid(uid)
    assert len(before) >= (1 if how == "thread" else 2)
    await sb.close()
    assert not await wait_gone([pid, *before]) and pids_of_uid(uid) == []


HOST_SCRIPT = """
import asyncio, sys, tempfile
from rlm_env.sandbox import Sandbox, SandboxConfig, prepare_context
async def main():
    sb = await Sandbox.start(SandboxConfig(seccomp=False), prepare_context("x", store_dir=tempfile.mkdtemp()))
    await sb.run_cell("import os, time\\nfor _ in range(3):\\n    if os.fork() == 0:\\n        os.setsid(); time.sleep(300)")
    print(sb.worker.uid, flush=True)
    await sb.run_cell("while True:\\n    try:\\n        time.sleep(300)\\n    except BaseException:\\n        pass")
asyncio.run(main())
"""


async def test_a_crashed_host_leaves_nothing_behind():
    """The host dies (SIGKILL) mid-cell, never calling close(): the sandbox must end by itself."""
    host = subprocess.Popen([sys.executable, "-c", HOST_SCRIPT], stdout=subprocess.PIPE, text=True)
    try:
        uid = int(host.stdout.readline())
        inside = pids_of_uid(uid)
        assert len(inside) == 4  # the worker and three setsid children
        time.sleep(0.2)
        host.kill()
        host.wait()
        assert not await wait_gone(inside, timeout=5)
        # (zombies may linger: orphans of a dead host are the host's pid 1's to reap)
        assert [p for p in pids_of_uid(uid) if alive(p)] == []
    finally:
        host.kill()
        host.wait()


def test_host_forks_after_everything():
    assert subprocess.run(["/bin/true"]).returncode == 0

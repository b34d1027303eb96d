"""The worker's plumbing: framing over the socket, the cell timer, and bounded output capture.

Runs inside the sandbox with `worker.py` (the launcher loads this source as the module
`rlm_worker_io` before running the worker); standard library only, never the `rlm_env` package.
"""

import _socket
import array
import codecs
import collections
import io
import json
import mmap
import os
import signal
import struct
import sys

HDR = struct.Struct(">I")
MAX_FRAME = 64 * 1024 * 1024


ITEMS_FAST = 10_000


def _items(data):
    """What the host counts to bound a frame's JSON items (protocol.count_items)."""
    return data.count(b",") + data.count(b"[") + data.count(b"{")


def _escape_str(s):
    """A JSON string literal whose `,`, `[` and `{` are \\u escapes: the host counts only
    structural ones then. (No other escape JSON writes contains those characters.)"""
    lit = json.encoder.encode_basestring_ascii(s)
    return lit.replace(",", "\\u002c").replace("[", "\\u005b").replace("{", "\\u007b")


def _encode_escaped(msg):
    """json.dumps(msg, ensure_ascii=True, allow_nan=False), with strings escaped as above."""

    def floatstr(o, _repr=float.__repr__):
        if o != o or o in (float("inf"), float("-inf")):
            raise ValueError("Out of range float values are not JSON compliant")
        return _repr(o)

    iterencode = json.encoder._make_iterencode(
        {}, None, _escape_str, None, floatstr, ": ", ", ", False, False, True
    )
    return "".join(iterencode(msg, 0))


class CellTimeout(BaseException):
    """Raised inside a cell that ran past its time limit (BaseException: `except Exception` misses it)."""


def clean(text):
    """Lone surrogates cannot travel as UTF-8: replace them instead of crashing later."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-8", "replace").decode("utf-8")


class Channel:
    """Length-prefixed JSON frames over the (blocking) socket the host handed us."""

    def __init__(self, fd):
        self.sock = _socket.socket(fileno=fd)

    @staticmethod
    def encode(msg):
        data = json.dumps(msg, ensure_ascii=True, allow_nan=False).encode("ascii")
        if _items(data) > ITEMS_FAST:  # many commas or brackets: maybe inside strings
            data = _encode_escaped(msg).encode("ascii")
        return HDR.pack(len(data)) + data

    def send(self, msg):
        self.sock.sendall(self.encode(msg))

    def send_raw(self, frame):
        self.sock.sendall(frame)

    def _exact(self, n, fds):
        buf = bytearray()
        while len(buf) < n:
            if fds is None:
                chunk = self.sock.recv(min(n - len(buf), 1 << 20))
            else:  # only the init frame carries a descriptor (the context file)
                chunk, anc, _flags, _addr = self.sock.recvmsg(n - len(buf), _socket.CMSG_SPACE(16))
                for level, kind, data in anc:
                    if level == _socket.SOL_SOCKET and kind == _socket.SCM_RIGHTS:
                        fds.extend(array.array("i", data[: len(data) - len(data) % 4]))
            if not chunk:
                os._exit(0)  # the host went away: nothing left to serve
            buf += chunk
        return bytes(buf)

    def recv(self, fds=None):
        (n,) = HDR.unpack(self._exact(4, fds))
        if n > MAX_FRAME:
            os._exit(3)
        return json.loads(self._exact(n, fds))


class Timer:
    """ITIMER_REAL around user code; re-fires every 0.5 s if user code swallows the timeout.

    `armed` is cleared before the itimer is, so a late SIGALRM never raises in worker code.
    """

    def __init__(self, seconds):
        self.seconds, self.armed, self.fired = seconds, False, False
        signal.signal(signal.SIGALRM, self._on_alarm)

    def _on_alarm(self, signum, frame):
        self.fired = True
        if self.armed:
            raise CellTimeout(f"the cell ran longer than {self.seconds:g} s")

    def start(self):
        self.fired, self.armed = False, True
        signal.setitimer(signal.ITIMER_REAL, self.seconds, 0.5)

    def stop(self):
        self.armed = False
        signal.setitimer(signal.ITIMER_REAL, 0, 0)

    def pause(self):
        return signal.setitimer(signal.ITIMER_REAL, 0, 0)

    def resume(self, prev):
        if self.armed:  # time spent blocked on the host does not count against the cell
            signal.setitimer(signal.ITIMER_REAL, max(prev[0], 0.001), prev[1] or 0.5)


class Capture(io.TextIOBase):
    """stdout/stderr of a cell: the first half of the budget plus a rolling tail, never more.

    A 10 MB print or an endless print loop costs at most `limit` characters of memory here.
    """

    encoding, errors = "utf-8", "replace"

    def __init__(self, limit):
        self.head_max, self.tail_max = limit // 2, limit - limit // 2
        self.buffer = BytesSink(self)
        self.reset()

    def reset(self):
        self.head, self.tail, self.total = [], collections.deque(), 0
        self.head_len = self.tail_len = 0

    def writable(self):
        return True

    def isatty(self):
        return False

    def write(self, s):
        if not isinstance(s, str):
            raise TypeError(f"write() argument must be str, not {type(s).__name__}")
        n = len(s)
        self.total += n
        room = self.head_max - self.head_len
        if room > 0:
            self.head.append(s[:room])
            self.head_len += min(room, n)
            if n <= room:
                return n
            s = s[room:] if n - room <= self.tail_max else s[-self.tail_max :]
        elif n > self.tail_max:
            s = s[-self.tail_max :]
        self.tail.append(s)
        self.tail_len += len(s)
        while self.tail and self.tail_len - len(self.tail[0]) >= self.tail_max:
            self.tail_len -= len(self.tail.popleft())
        return n

    def render(self):
        """(text, characters cut): head, a marker naming the cut, then the tail."""
        self.buffer.flush_decoder()
        head, tail = "".join(self.head), "".join(self.tail)
        cut = max(self.total - len(head) - min(len(tail), self.tail_max), 0)
        if cut:
            tail = tail[-self.tail_max :] if self.tail_max else ""
            return clean(f"{head}\n... [{cut:,} characters cut] ...\n{tail}"), cut
        return clean(head + tail), 0


class BytesSink(io.RawIOBase):
    """`sys.stdout.buffer`: bytes are decoded as UTF-8 with replacement, never an error."""

    def __init__(self, capture):
        self.capture, self.decoder = capture, codecs.getincrementaldecoder("utf-8")("replace")

    def writable(self):
        return True

    def write(self, b):
        self.capture.write(self.decoder.decode(bytes(b)))
        return len(b)

    def flush_decoder(self):
        rest = self.decoder.decode(b"", final=True)
        if rest:
            self.capture.write(rest)


def exit_when_host_goes(fd):
    """A watchdog thread: when the host's end of the socket closes, exit, even mid-cell.

    A second line after the kernel's (bwrap's death kills the namespace's init, and with it this
    worker; see launch.py), and the only one in rlimit mode. It needs the GIL, so a cell spinning
    in C code never lets it run: that case is the kernel's alone.
    """
    import _thread
    import select

    def watch():
        poller = select.poll()
        poller.register(fd, select.POLLRDHUP)  # no POLLIN: incoming frames do not wake it
        while not poller.poll():
            pass
        os._exit(0)

    old = _thread.stack_size(256 * 1024)
    try:
        _thread.start_new_thread(watch, ())
    finally:
        _thread.stack_size(old)


def _prctl(*args):
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    return libc.prctl(*[ctypes.c_ulong(a) if isinstance(a, int) else a for a in args])


def die_with_parent():
    """PR_SET_PDEATHSIG(SIGKILL) for this process: it covers the uid-less modes (rlimit mode:
    the host is the parent). In bwrap mode as root the parent is bwrap's init, which runs as
    uid 0 without CAP_KILL, so the kernel drops this signal; there the namespace's init gets
    bwrap's own death signal instead and takes this worker with it."""
    if _prctl(1, int(signal.SIGKILL), 0, 0, 0) != 0:  # PR_SET_PDEATHSIG = 1
        os._exit(72)


def install_seccomp(prog):
    """Load the host-built BPF program for this thread and all later ones, or die trying."""
    import ctypes

    class Fprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

    buf = ctypes.create_string_buffer(prog, len(prog))
    fprog = Fprog(len(prog) // 8, ctypes.addressof(buf))
    # PR_SET_NO_NEW_PRIVS = 38; PR_SET_SECCOMP = 22 with SECCOMP_MODE_FILTER = 2.
    if _prctl(38, 1, 0, 0, 0) != 0 or _prctl(22, 2, ctypes.byref(fprog), 0, 0) != 0:
        os._exit(71)  # asked for a filter and could not get one: never run user code without it


# ---- the context str, mapped over the shared file (the host writes it in CPython's layout) --------

STR_CODECS = {1: "latin-1", 2: "utf-16-le", 4: "utf-32-le"}
"""Bytes a character -> the codec whose output is CPython's str payload (as the host's STR_CODECS)."""
_PROBES = {"ascii": ("rlm", "-probe"), 1: ("rlm", "-pr\xf6be"), 2: ("rlm", "-pr\u03a9be"), 4: ("rlm", "-pr\U0001f600be")}  # fmt: skip


def map_str(fd, size, width, ascii):
    """A real `str` whose characters are the context file's own page-cache pages, or None.

    Decoding would give every worker a private copy (16 episodes on a 40 MB context: 640 MB).
    The host wrote the text as CPython stores a compact str of its kind (`width` bytes a
    character, its widest character's; `ascii` for the ASCII flavour of 1 byte), so the str is
    a header followed by the file's bytes: the file is mapped (MAP_PRIVATE: writes could only
    ever touch private copies) right after an anonymous page that holds the header, copied from
    a fresh str of the same kind and patched (immortal-sized refcount, length, hash unset); zero
    bytes after it are the terminating NUL. Every worker on the context then shares the same
    physical pages. The layout is checked on a probe string first (length, hash, and its
    characters where the header says they start, in the codec's bytes), and the result against
    the file; anything unexpected returns None (the caller decodes a private copy instead).
    """
    import ctypes

    codec = STR_CODECS.get(width)
    if codec is None or sys.implementation.name != "cpython" or size <= 0 or size % width:
        return None
    probe = "".join(_PROBES["ascii" if ascii else width])  # fresh, compact, of that kind, not interned
    header, page, word = sys.getsizeof(probe) - (len(probe) + 1) * width, mmap.PAGESIZE, ctypes.c_ssize_t
    if not 24 < header < page:
        return None
    probe_hash = hash(probe)  # computed (and cached in the header) before it is looked for
    if (
        word.from_address(id(probe) + 16).value != len(probe)
        or word.from_address(id(probe) + 24).value != probe_hash
        or ctypes.string_at(id(probe) + header, (len(probe) + 1) * width) != (probe + "\0").encode(codec)
    ):
        return None  # length, hash or characters are not where CPython 3.x keeps them: do not guess
    fields = _extra_header_fields(probe, header)
    if fields is None:
        return None
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [
        ctypes.c_void_p,
        ctypes.c_size_t,
        ctypes.c_int,
        ctypes.c_int,
        ctypes.c_int,
        ctypes.c_long,
    ]
    span = page + -(-(size + width) // page) * page  # header page, the file, room for the NUL
    base = libc.mmap(None, span, 3, 0x22, -1, 0)  # PROT_READ|WRITE, MAP_PRIVATE|ANONYMOUS
    if base in (None, ctypes.c_void_p(-1).value):
        return None
    if libc.mmap(base + page, size, 3, 0x12, fd, 0) != base + page:  # MAP_PRIVATE|MAP_FIXED
        libc.munmap(ctypes.c_void_p(base), ctypes.c_size_t(span))  # nothing points into it yet
        return None
    addr, chars = base + page - header, size // width
    ctypes.memmove(addr, id(probe), header)
    word.from_address(addr).value = 1 << 40  # never reaches 0, so never handed to free()
    word.from_address(addr + 16).value = chars
    word.from_address(addr + 24).value = -1
    for offset in fields:  # 3.11's wstr: a kind-4 str's wchar_t view is its own characters
        word.from_address(addr + offset).value = base + page if fields[offset] == "data" else chars
    text = ctypes.cast(ctypes.c_void_p(addr), ctypes.py_object).value
    edge = min(chars, 4096)
    head, tail = os.pread(fd, edge * width, 0), os.pread(fd, edge * width, size - edge * width)
    if (
        type(text) is not str
        or len(text) != chars
        or text[:edge].encode(codec, "surrogatepass") != head
        or text[-edge:].encode(codec, "surrogatepass") != tail
    ):
        return None  # (the mapping is leaked on purpose: something may still point into it)
    return text


def _extra_header_fields(probe, header):
    """{offset: "data" | "length"} for the header words after the state that are not zero, or None.

    CPython 3.11 caches a wchar_t view (wstr, wstr_length): on Linux a kind-4 str's points at
    its own characters, so the copied header must point at the mapped ones instead. Any other
    non-zero word (a cached UTF-8 copy, a layout this code does not know) refuses the mapping.
    """
    import ctypes

    data, fields = id(probe) + header, {}
    for offset in range(40, header - header % 8, 8):
        value = ctypes.c_size_t.from_address(id(probe) + offset).value
        if value == data:
            fields[offset] = "data"
        elif value == len(probe):
            fields[offset] = "length"
        elif value != 0:
            return None
    if sorted(fields.values()) not in ([], ["data", "length"]):
        return None  # a length without its pointer (or the reverse) is not the wchar_t view
    return fields

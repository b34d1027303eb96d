"""How much memory sandboxes really cost: PSS from /proc, not RSS.

RSS counts every resident page a process maps, so 16 workers sharing one 40 MB context file
through the page cache "use" 640 MB by RSS while the machine holds the pages once. PSS
(proportional set size) charges each shared page to its N users at 1/N each, so the PSS of a
set of processes sums to what they hold together. The kernel keeps both, per process, in
/proc/<pid>/smaps_rollup (one summary) and, per mapping, in /proc/<pid>/smaps.

Everything here is best effort over live pids: a process that exits between the listing and
the read is simply skipped (it holds no memory any more). Reading another user's smaps needs
root or the same uid; the benchmarks and the load test run as root, where sandbox uids are
readable.
"""

from __future__ import annotations

from collections.abc import Iterable

KIB = 1024


def smaps_rollup(pid: int) -> dict[str, int]:
    """{field: bytes} from /proc/<pid>/smaps_rollup (Rss, Pss, Pss_Anon, Pss_File, Pss_Shmem,
    Shared_Clean, Private_Dirty, ...); empty if the process is gone or unreadable."""
    out: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                key, _, rest = line.partition(":")
                parts = rest.split()
                if len(parts) == 2 and parts[1] == "kB" and parts[0].isdigit():
                    out[key.strip()] = int(parts[0]) * KIB
    except (OSError, ValueError):
        return {}
    return out


def summed(pids: Iterable[int], field: str = "Pss") -> int:
    """The sum of one smaps_rollup field (bytes) over `pids`."""
    return sum(smaps_rollup(pid).get(field, 0) for pid in pids)


def pss_bytes(pids: Iterable[int]) -> int:
    """Total PSS of `pids`, in bytes: their share of every page they map."""
    return summed(pids, "Pss")


def rss_bytes(pids: Iterable[int]) -> int:
    """Total RSS of `pids`, in bytes (counts shared pages once per process)."""
    return summed(pids, "Rss")


def mapping_pss(pid: int, path_part: str) -> int:
    """PSS (bytes) of the mappings of `pid` whose backing path contains `path_part`.

    Used to see the context file's own share directly: a worker that maps the shared context
    shows it here; one that decoded a private copy shows nearly nothing here and the copy in
    its anonymous memory instead.
    """
    total, inside = 0, False
    try:
        with open(f"/proc/{pid}/smaps") as f:
            for line in f:
                head = line.split(maxsplit=5)
                if head and "-" in head[0] and len(head) >= 5:  # a mapping's header line
                    inside = len(head) == 6 and path_part in head[5]
                elif inside and line.startswith("Pss:"):
                    total += int(line.split()[1]) * KIB
    except (OSError, ValueError):
        return 0
    return total


def mib(n_bytes: float) -> float:
    return round(n_bytes / (1 << 20), 1)

"""What a running node's processes hold, read from /proc: resident memory (now and its peak),
threads and open file descriptors, for the flood and long-life drills and their benchmarks.
Linux only."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Usage:
    """One process: resident set size now and at its peak (VmRSS, VmHWM), in KiB; its
    threads; its open file descriptors (sockets included)."""

    pid: int
    role: str
    rss_kib: int
    peak_rss_kib: int
    threads: int
    fds: int


def tree(pid: int) -> list[int]:
    """`pid` and every process below it, parents first."""
    found, pending = [], [pid]
    while pending:
        current = pending.pop(0)
        found.append(current)
        try:
            tasks = list(Path(f"/proc/{current}/task").iterdir())
        except FileNotFoundError:
            continue
        for task in tasks:
            try:
                pending += [int(c) for c in (task / "children").read_text().split()]
            except FileNotFoundError:
                continue
    return found


def role(pid: int, root: int) -> str:
    """What a process of the node is: the supervisor (`root`), a receiving process,
    multiprocessing's resource tracker, or its command line."""
    if pid == root:
        return "supervisor"
    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    if "spawn_main" in cmdline:
        return "receiver"
    if "resource_tracker" in cmdline:
        return "resource tracker"
    return cmdline[:60]


def usage(pid: int, root: int) -> Usage:
    """`pid`'s usage now; raises FileNotFoundError when it has ended."""
    status = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        status[key] = value.split()
    return Usage(pid=pid, role=role(pid, root), rss_kib=int(status["VmRSS"][0]),
                 peak_rss_kib=int(status["VmHWM"][0]), threads=int(status["Threads"][0]),
                 fds=len(list(Path(f"/proc/{pid}/fd").iterdir())))


def node_usage(root: int) -> dict[int, Usage]:
    """Usage of the node whose supervisor is `root` and of every process below it, by pid."""
    found = {}
    for pid in tree(root):
        try:
            found[pid] = usage(pid, root)
        except FileNotFoundError:
            continue  # ended meanwhile
    return found


def table(before: dict[int, Usage], after: dict[int, Usage]) -> list[str]:
    """Lines comparing two samples of the same processes."""
    lines = [f"{'pid':>8} {'process':<17} {'RSS MiB':>15} {'peak MiB':>9} {'threads':>9} "
             f"{'fds':>9}"]
    for pid, now in after.items():
        was = before.get(pid)
        if was is None:
            lines.append(f"{pid:>8} {now.role:<17} {'(new) ':>9}{now.rss_kib / 1024:6.1f} "
                         f"{now.peak_rss_kib / 1024:9.1f} {now.threads:>9} {now.fds:>9}")
            continue
        lines.append(f"{pid:>8} {now.role:<17} {was.rss_kib / 1024:6.1f} -> "
                     f"{now.rss_kib / 1024:5.1f} {now.peak_rss_kib / 1024:9.1f} "
                     f"{was.threads:>3} -> {now.threads:<3} {was.fds:>3} -> {now.fds:<3}")
    return lines

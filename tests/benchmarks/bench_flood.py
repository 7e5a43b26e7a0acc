"""A flood: ``--associations`` scanners sending to the node at once for ``--seconds``.

Starts the node (``ichtriage serve``, SQLite, no triage workers unless ``--workers``) on
loopback. Each sender is DCMTK's storescu, run again and again: it sends a new series of
``--per-association`` CT slices (``--size`` squared, 16 bit) over one association, and the
next storescu starts the next series, until the time is up (the series under way is
finished). (pynetdicom as the sender lost responses: its requestor's reactor thread can take
a fast response off the queue before send_c_store waits for it, "Received unexpected C-STORE
service message", then a DIMSE timeout; pynetdicom issue 842.) Afterwards every instance the node answered with success must have
its row in the index and its file in the store: nothing acknowledged is dropped. Prints the
throughput, the statuses answered, and for every process of the node its resident memory
after start-up, during the flood (sampled each second), at the end and at its peak (VmHWM),
with its threads and file descriptors. A script that prints numbers; the short version is
tests/test_endurance_e2e.py.

    TCP_NODELAY=1 .venv/bin/python tests/benchmarks/bench_flood.py [--seconds 60]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository, for tests.*

from tests import factories, peers
from tests.nodeproc import NodeProcess, running_node
from tests.processes import Usage, node_usage, table

NO_ANSWER = "no answer"  # the association ended before the node answered
SUCCESS = "Success"


@dataclass
class Flood:
    """What the senders sent and were answered: the answer by SOP Instance UID (storescu's
    words: 'Success', another status, or NO_ANSWER), and the series."""

    answers: dict[str, str] = field(default_factory=dict)
    series: set[str] = field(default_factory=set)
    refused_associations: int = 0
    seconds: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def acknowledged(self) -> set[str]:
        return {uid for uid, answer in self.answers.items() if answer == SUCCESS}


def storescu_answers(output: str) -> dict[str, str]:
    """The answer to each file storescu -v sent, by path, from its log."""
    answers, current = {}, None
    for line in output.splitlines():
        if "Sending file: " in line:
            current = line.split("Sending file: ", 1)[1].strip()
        elif "Received Store Response" in line and current is not None:
            answers[current] = line.split("(", 1)[1].rstrip(")") if "(" in line else line
            current = None
    return answers


def send_series(port: int, flood: Flood, folder: Path, aet: str, per_association: int,
                size: int) -> None:
    """One new series over one DCMTK storescu association; every answer recorded."""
    datasets = factories.ct_series(per_association, size=size)
    paths = factories.write_series(folder, datasets)
    try:
        done = peers.run_storescu(paths, port, aet=aet, called_aet="ICHTRIAGE",
                                  extra_args=["-v", "--no-halt"], timeout=300)
    finally:
        for path in paths:
            path.unlink()
    answers = storescu_answers(done.stdout + done.stderr)
    with flood.lock:
        flood.series.add(str(datasets[0].SeriesInstanceUID))
        if "Association Rejected" in done.stdout + done.stderr:
            flood.refused_associations += 1
        for path, ds in zip(paths, datasets, strict=True):
            flood.answers[str(ds.SOPInstanceUID)] = answers.get(str(path), NO_ANSWER)


def flood(port: int, work: Path, *, seconds: float, associations: int,
          per_association: int = 20, size: int = 256) -> Flood:
    """`associations` senders (DCMTK storescu, calling FLOOD<n>), each sending series after
    series until `seconds` are up; the files are written to `work` and removed after."""
    result = Flood()
    start = time.monotonic()
    deadline = start + seconds

    def sender(index: int) -> None:
        folder = work / f"sender-{index}"
        while time.monotonic() < deadline:
            send_series(port, result, folder, f"FLOOD{index}", per_association, size)

    threads = [threading.Thread(target=sender, args=(i,), name=f"flood-{i}")
               for i in range(associations)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    result.seconds = time.monotonic() - start
    return result


def kept(node: NodeProcess) -> tuple[set[str], set[str]]:
    """SOP Instance UIDs indexed, and those with a file in the store."""
    rows = {str(r[0]) for r in node.query("select sop_uid from instance")}
    files = {p.stem for p in (node.data_dir / "data").rglob("*.dcm")}
    return rows, files


class Sampler:
    """Samples the node's processes every `interval` seconds while running."""

    def __init__(self, root: int, interval: float = 1.0) -> None:
        self.root = root
        self.interval = interval
        self.samples: list[dict[int, Usage]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sampler", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.samples.append(node_usage(self.root))

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--associations", type=int, default=8)
    parser.add_argument("--per-association", type=int, default=20, help="slices per series")
    parser.add_argument("--size", type=int, default=256, help="rows and columns per slice")
    parser.add_argument("--receivers", type=int, default=2)
    parser.add_argument("--workers", type=int, default=0, help="triage workers in the node")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="ichtriage-flood-") as tmp_name:
        tmp = Path(tmp_name)
        with running_node(tmp, receivers=args.receivers, workers=args.workers) as node:
            started = node_usage(node.proc.pid)
            with Sampler(node.proc.pid) as sampler:
                sent = flood(node.port, tmp / "out", seconds=args.seconds,
                             associations=args.associations,
                             per_association=args.per_association, size=args.size)
            ended = node_usage(node.proc.pid)
            rows, files = kept(node)
        acknowledged = sent.acknowledged()
        megabytes = len(acknowledged) * (args.size ** 2 * 2) / 1e6
        print(f"flood: {args.associations} associations for {sent.seconds:.1f} s, "
              f"{len(sent.series)} series of {args.per_association} slices of "
              f"{args.size}x{args.size}")
        print(f"  {len(acknowledged)} instances stored, {len(acknowledged) / sent.seconds:.1f} "
              f"instances/s, {megabytes / sent.seconds:.1f} MB/s of pixel data")
        print(f"  answers: {dict(Counter(sent.answers.values()))}, associations refused: "
              f"{sent.refused_associations}")
        print(f"  acknowledged without a row: {len(acknowledged - rows)}, without a file: "
              f"{len(acknowledged - files)}")
        print("  resident memory during the flood (MiB, each process, sampled each second):")
        for pid, now in ended.items():
            series = [s[pid].rss_kib / 1024 for s in sampler.samples if pid in s]
            if series:
                quarters = [series[min(len(series) - 1, len(series) * q // 4)]
                            for q in (1, 2, 3, 4)]
                print(f"    {pid} {now.role}: min {min(series):.0f}, max {max(series):.0f}; "
                      f"at 1/4, 1/2, 3/4, the end: "
                      f"{', '.join(f'{v:.0f}' for v in quarters)}")
        print("  after start-up -> after the flood:")
        for line in table(started, ended):
            print("   ", line)
        dropped = (acknowledged - rows) | (acknowledged - files)
    return 1 if dropped else 0


if __name__ == "__main__":
    sys.exit(main())

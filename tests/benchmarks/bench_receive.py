"""Receive throughput: N 512x512 16-bit CT slices sent by DCMTK storescu, per target SCP.

Targets, all on 127.0.0.1 with TCP_NODELAY=1 in every process's environment:
  node      the ichtriage node (``ichtriage serve``), the thing under test
  bare      tests/benchmarks/bare_scp.py, a pynetdicom SCP that only writes the bytes
  storescp  DCMTK storescp (the C++ floor)
  orthanc   Orthanc, a real PACS

Runs alternate between targets (node, bare, storescp, orthanc, node, ...) for ``--repeats``
rounds; each round sends a freshly generated series (new UIDs) so no target ever sees a
duplicate. Before each run every server must be idle (no CPU for a moment: the node's
triage of the previous series must not steal time from the next run), and the disk must
be quiet: received files are removed between runs for bare, storescp and Orthanc (the node
keeps its store), then everything written is flushed (sync). Without that flush a run
started while the kernel still wrote back the previous target's 100-500 MB, and a target
that fsyncs each instance before answering (the node) waited behind it: the node's
four-association rate fell from about 420 to about 345 slices/s when the other targets ran
between its runs.

With ``--associations 4`` the N slices are split over 4 storescu processes started at once
(N/4 each, N in total), so slices/s compare directly with one association.
This is a script that prints numbers, never a test.

    .venv/bin/python tests/benchmarks/bench_receive.py --targets bare,storescp,orthanc
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository, for tests.*

from tests.benchmarks.ctgen import write_ct_series
from tests.peers import (
    LOOPBACK,
    OrthancServer,
    dcmtk_tool,
    free_port,
    have_orthanc,
    nodelay_env,
    orthanc_server,
    storescp_server,
    wait_for_port,
)

ALL_TARGETS = ("node", "node-stock", "bare", "storescp", "orthanc")
CALLING_AET = "BENCHSCU"
NODE_AET = "ICHTRIAGE"
RATIOS = (
    ("node", "node-stock"),
    ("node-stock", "bare"),
    ("node-stock", "orthanc"),
    ("node", "bare"),
    ("node", "storescp"),
    ("node", "orthanc"),
    ("orthanc", "storescp"),
    ("bare", "storescp"),
)


class Target(Protocol):
    @property
    def name(self) -> str: ...
    @property
    def aet(self) -> str: ...
    @property
    def port(self) -> int: ...

    def pids(self) -> list[int]: ...
    def clear(self) -> None: ...
    def received(self) -> int | None: ...


# --------------------------------------------------------------------------- targets


@dataclass
class FolderTarget:
    """A server writing one file per instance into ``out_dir`` (bare pynetdicom, storescp)."""

    name: str
    aet: str
    port: int
    out_dir: Path
    server_pids: list[int] = field(default_factory=list)

    def pids(self) -> list[int]:
        return self.server_pids

    def clear(self) -> None:
        for path in self.out_dir.iterdir():
            path.unlink()

    def received(self) -> int | None:
        return sum(1 for _ in self.out_dir.iterdir())


@dataclass
class OrthancTarget:
    name: str
    server: OrthancServer

    @property
    def aet(self) -> str:
        return self.server.aet

    @property
    def port(self) -> int:
        return self.server.dicom_port

    def pids(self) -> list[int]:
        pid = self.server.pid
        return [pid] if pid is not None else []

    def clear(self) -> None:
        self.server.delete_all()

    def received(self) -> int | None:
        return len(self.server.instances())


@dataclass
class NodeTarget:
    """The node keeps what it receives (its database and store are its own business)."""

    name: str
    aet: str
    port: int
    pid: int

    def pids(self) -> list[int]:
        return [self.pid]

    def clear(self) -> None:
        return None

    def received(self) -> int | None:
        return None


@contextmanager
def _process(cmd: list[str], log: Path, ready: re.Pattern[str], timeout: float) -> Iterator[int]:
    """Run ``cmd`` until the context ends; wait for a stdout/stderr line matching ``ready``."""
    seen = threading.Event()
    with log.open("w") as out:
        proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=nodelay_env()
        )

        def pump() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                out.write(line)
                out.flush()
                if ready.search(line):
                    seen.set()

        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
        try:
            deadline = time.monotonic() + timeout
            while not seen.wait(0.1):
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        f"{cmd[0]} not ready (exit code {proc.poll()}); log: {log}\n"
                        + log.read_text()[-3000:]
                    )
            yield proc.pid
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            reader.join(timeout=5)


def start_target(name: str, stack: ExitStack, work: Path, args: argparse.Namespace) -> Target:
    out_dir = work / f"{name}-received"
    out_dir.mkdir()
    if name == "bare":
        port = free_port()
        script = Path(__file__).with_name("bare_scp.py")
        cmd = [sys.executable, str(script), "--port", str(port), "--out", str(out_dir)]
        pid = stack.enter_context(_process(cmd, work / "bare.log", re.compile("ready"), 60))
        wait_for_port(LOOPBACK, port, 10)
        return FolderTarget(name, "BARESCP", port, out_dir, [pid])
    if name == "storescp":
        aet, port = stack.enter_context(storescp_server(out_dir, aet="STORESCP"))
        # storescp --inetd processes come and go per association; they are never idle-busy.
        return FolderTarget(name, aet, port, out_dir)
    if name == "orthanc":
        server = stack.enter_context(orthanc_server(work / "orthanc-home", aet="ORTHANC"))
        return OrthancTarget(name, server)
    if name in ("node", "node-stock"):
        port = free_port()
        # Store + index, as the other targets: no triage worker. With one, a series settles
        # 2 s after its run and is triaged during whatever run comes next (the idle check
        # cannot see work that has not started yet), taking CPU from that target.
        cmd = [args.ichtriage, "serve", "--data-dir", str(work / "node-data"),
               "--port", str(port), "--http-port", "0", "--settle-seconds", "2",
               "--workers", "0", "--ae-title", NODE_AET,
               *(["--receive-path", "stock"] if name == "node-stock" else []),
               *args.node_args.split()]  # fmt: skip
        ready = re.compile(r"\bready\b", re.IGNORECASE)
        pid = stack.enter_context(_process(cmd, work / f"{name}.log", ready, args.node_timeout))
        wait_for_port(LOOPBACK, port, 10)
        return NodeTarget(name, NODE_AET, port, pid)
    raise ValueError(f"unknown target {name!r}; choose from {', '.join(ALL_TARGETS)}")


# --------------------------------------------------------------------------- idleness


def _cpu_ticks(pid: int) -> int:
    """utime + stime of ``pid`` and all its live descendants, in clock ticks."""
    total, todo = 0, [pid]
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            children.setdefault(int(fields[1]), []).append(int(entry))
    while todo:
        current = todo.pop()
        try:
            fields = Path(f"/proc/{current}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
        todo.extend(children.get(current, []))
    return total


def wait_idle(pids: list[int], *, window: float = 0.5, timeout: float = 600.0) -> float:
    """Wait until ``pids`` use under 5% of a core for two windows in a row; returns seconds."""
    if not pids:
        return 0.0
    hz = os.sysconf("SC_CLK_TCK")
    start = time.monotonic()
    quiet = 0
    before = sum(_cpu_ticks(p) for p in pids)
    while quiet < 2 and time.monotonic() - start < timeout:
        time.sleep(window)
        after = sum(_cpu_ticks(p) for p in pids)
        quiet = quiet + 1 if (after - before) / hz < 0.05 * window else 0
        before = after
    return time.monotonic() - start


# --------------------------------------------------------------------------- runs


def send(target: Target, files: list[Path], associations: int, timeout: float, *,
         per_slice: bool = False) -> float:
    """Wall time of ``associations`` storescu processes sending ``files`` between them; with
    ``per_slice``, one storescu (one association) per file, one after the other."""
    if per_slice:
        t0 = time.perf_counter()
        for file in files:
            send(target, [file], 1, timeout)
        return time.perf_counter() - t0
    chunks = [files[i::associations] for i in range(associations)]
    cmds = [
        [dcmtk_tool("storescu"), "-aet", CALLING_AET, "-aec", target.aet, "-to", "10",
         LOOPBACK, str(target.port), *map(str, chunk)]
        for chunk in chunks
    ]  # fmt: skip
    env = nodelay_env()
    t0 = time.perf_counter()
    procs = [
        subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        for cmd in cmds
    ]
    outputs = [p.communicate(timeout=timeout) for p in procs]
    elapsed = time.perf_counter() - t0
    for proc, (_, err) in zip(procs, outputs, strict=True):
        if proc.returncode != 0 or "E:" in err:
            raise RuntimeError(f"storescu -> {target.name} failed ({proc.returncode}):\n{err}")
    return elapsed


def write_round(folder: Path, args: argparse.Namespace, *, seed: int) -> list[Path]:
    """One round's files: a series of ``args.slices`` slices, or with ``args.studies_of_one``
    as many studies of one slice each (a new study and series per instance)."""
    if not args.studies_of_one:
        return write_ct_series(folder, args.slices, size=args.size, seed=seed)
    return [write_ct_series(folder / f"{i:06d}", 1, size=args.size, seed=seed * 1_000_000 + i)[0]
            for i in range(args.slices)]


def run(args: argparse.Namespace) -> dict[tuple[str, int], list[float]]:
    rates: dict[tuple[str, int], list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="ichtriage-bench-") as tmp, ExitStack() as stack:
        work = Path(tmp)
        targets: list[Target] = []
        for name in args.targets:
            try:
                targets.append(start_target(name, stack, work, args))
            except (RuntimeError, TimeoutError, OSError) as exc:
                print(f"!! target {name} left out: {exc}", file=sys.stderr)
        if not targets:
            raise SystemExit("no target could be started")
        all_pids = [pid for t in targets for pid in t.pids()]
        shape = (f"{args.slices} one-slice studies" if args.studies_of_one
                 else f"{args.slices} slices")
        print(f"targets: {', '.join(t.name for t in targets)}; {shape} of {args.size}x{args.size}; "
              f"{args.repeats} rounds; associations {args.associations} "
              f"(the slices are split between the associations)", flush=True)  # fmt: skip
        for round_no in range(1, args.repeats + 1):
            for assoc in args.associations:
                # A new series (new UIDs) for every run: the node keeps its store, and a
                # series it has seen would measure its duplicate path instead.
                series_dir = work / f"series-{round_no}-{assoc}"
                files = write_round(series_dir, args, seed=round_no * 100 + assoc)
                for target in targets:
                    target.clear()
                    os.sync()  # and the disk quiet: see the module's docstring
                    wait_idle(all_pids)
                    elapsed = send(target, files, assoc, args.send_timeout,
                                   per_slice=args.per_slice)
                    got = target.received()
                    if got is not None and got != len(files):
                        raise RuntimeError(f"{target.name} holds {got} of {len(files)} instances")
                    rate = len(files) / elapsed
                    rates.setdefault((target.name, assoc), []).append(rate)
                    print(f"round {round_no} x{assoc} {target.name:9s} {elapsed:7.3f} s "
                          f"{rate:8.1f} slices/s", flush=True)  # fmt: skip
                shutil.rmtree(series_dir)
        wait_idle(all_pids)
    return rates


def report(rates: dict[tuple[str, int], list[float]], associations: list[int]) -> None:
    medians = {key: statistics.median(values) for key, values in rates.items()}
    print("\nmedian slices/s (total over the associations)")
    names = sorted({name for name, _ in medians}, key=ALL_TARGETS.index)
    print("target     " + "".join(f"{f'x{a}':>12s}" for a in associations))
    for name in names:
        cells = "".join(
            f"{medians[(name, a)]:12.1f}" if (name, a) in medians else f"{'-':>12s}"
            for a in associations
        )
        print(f"{name:10s} {cells}")
    # Each ratio twice: of the medians, and the median of the ratios within each round (the
    # two runs of a round ran minutes apart at most, on a shared machine whose speed drifts).
    for assoc in associations:
        print(f"\nratios, {assoc} association(s): throughput A / throughput B "
              "(of the medians; median of the per-round ratios)")
        for a, b in RATIOS:
            if (a, assoc) in medians and (b, assoc) in medians:
                r = medians[(a, assoc)] / medians[(b, assoc)]
                words = f"{a} {r:.2f}x as fast" if r >= 1 else f"{a} {1 / r:.2f}x slower"
                paired = _per_round(rates[(a, assoc)], rates[(b, assoc)])
                print(f"  {a:8s} vs {b:8s} {r:6.3f}  ({words}); per round {paired}")
    if len(associations) > 1:
        base = associations[0]
        print(f"\nscaling: throughput with n associations / with {base}, per target "
              "(of the medians; median of the per-round ratios)")
        for name in names:
            for assoc in associations[1:]:
                if (name, assoc) in medians and (name, base) in medians:
                    r = medians[(name, assoc)] / medians[(name, base)]
                    paired = _per_round(rates[(name, assoc)], rates[(name, base)])
                    print(f"  {name:10s} x{assoc}/x{base} {r:6.3f}; per round {paired}")


def _per_round(numerators: list[float], denominators: list[float]) -> str:
    ratios = [n / d for n, d in zip(numerators, denominators, strict=True)]
    listed = " ".join(f"{r:.2f}" for r in ratios)
    return f"{statistics.median(ratios):.3f} ({listed})"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--slices", type=int, default=200, help="slices per run")
    parser.add_argument("--repeats", type=int, default=5, help="rounds over the targets")
    parser.add_argument("--targets", default=",".join(ALL_TARGETS), help="comma-separated")
    parser.add_argument(
        "--associations", default="1", help="comma-separated, e.g. 1,4: concurrent storescu"
    )
    parser.add_argument(
        "--ichtriage",
        default=str(Path(sys.executable).with_name("ichtriage")),
        help="the node's command",
    )
    parser.add_argument("--node-args", default="", help="more flags for the node, e.g. "
                        "'--max-pdu 16384'")
    parser.add_argument("--per-slice", action="store_true",
                        help="one association per slice (a storescu per file), as some "
                        "modalities send; --associations is then ignored")
    parser.add_argument("--studies-of-one", action="store_true",
                        help="every slice its own study and series (as radiographs come); "
                        "the per-instance cost of a new study, folder and index rows")
    parser.add_argument("--size", type=int, default=512, help="rows and columns per slice")
    parser.add_argument("--node-timeout", type=float, default=180.0, help="s to get ready")
    parser.add_argument("--send-timeout", type=float, default=600.0, help="s per run")
    args = parser.parse_args(argv)
    args.targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    unknown = set(args.targets) - set(ALL_TARGETS)
    if unknown:
        parser.error(f"unknown targets {sorted(unknown)}; choose from {', '.join(ALL_TARGETS)}")
    if "orthanc" in args.targets and not have_orthanc():
        print("!! Orthanc is not installed: target orthanc left out", file=sys.stderr)
        args.targets.remove("orthanc")
    args.associations = [int(a) for a in args.associations.split(",")]
    if args.slices < 1 or args.repeats < 1 or min(args.associations) < 1:
        parser.error("--slices, --repeats and --associations must be positive")
    if max(args.associations) > args.slices:
        parser.error("more associations than slices")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    rates = run(args)
    report(rates, args.associations)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Time to result: from storescu's ack of the last slice to the SR accepted by the PACS.

Starts Orthanc (the hospital PACS) and the node (``ichtriage serve`` with the default model,
Orthanc as its destination) on loopback, sends ``--series`` phantom series of ``--slices``
512x512 slices one after the other with DCMTK storescu (bleeds and normals alternating), and
for each series measures:
  total     storescu exit (the last slice acked, association released) -> the SR visible in
            Orthanc's REST API (polled every 20 ms)
  settle    the configured settle time, part of the total
  worker    job claimed -> job done, from the node's database (decode, model, SR, indexing)
Prints p50/p95 and the worker's throughput in slices/s. A script that prints numbers; never
a test.

    TCP_NODELAY=1 .venv/bin/python tests/benchmarks/bench_pipeline.py --series 5 --slices 40
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository, for tests.*

from sqlalchemy import create_engine, text

from ml.phantom import write_series
from tests.nodeproc import running_node
from tests.peers import orthanc_server, run_storescu


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def _time(value: object) -> datetime:
    """A timestamp as SQLite (text) or PostgreSQL (datetime) returns it."""
    return value if isinstance(value, datetime) else datetime.fromisoformat(str(value))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--series", type=int, default=5)
    parser.add_argument("--slices", type=int, default=40)
    parser.add_argument("--settle", type=float, default=2.0)
    parser.add_argument("--receivers", type=int, default=2)
    parser.add_argument("--model", default="", help="checkpoint (default: the shipped model)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="ichtriage-pipeline-") as tmp_name:
        tmp = Path(tmp_name)
        series = [write_series(tmp / f"s{i}", seed=5000 + i, slices=args.slices, size=512,
                               subtypes=("subdural",) if i % 2 == 0 else ())
                  for i in range(args.series)]
        extra = ["--model", args.model] if args.model else []
        with orthanc_server(tmp / "orthanc", aet="PACS") as pacs, running_node(
                tmp / "node", "--destination", f"PACS@127.0.0.1:{pacs.dicom_port}", *extra,
                receivers=args.receivers, settle=args.settle, workers=1) as node:
            totals: list[float] = []
            for s in series:
                before = len(pacs.instances())
                sent = run_storescu(tmp / s.paths[0].parent.name, node.port, aet="CT1",
                                    called_aet="ICHTRIAGE")
                acked = time.perf_counter()
                if sent.returncode != 0:
                    raise SystemExit(f"storescu failed: {sent.stderr}")
                deadline = acked + 120
                while len(pacs.instances()) < before + 1:
                    if time.perf_counter() > deadline:
                        raise SystemExit("no SR at Orthanc within 120 s\n" + node.log_text())
                    time.sleep(0.02)
                totals.append(time.perf_counter() - acked)
            engine = create_engine(node.db_url)
            with engine.connect() as conn:
                jobs = conn.execute(text(
                    "select started_at, finished_at from job where status = 'done'")).all()
            engine.dispose()
    workers = [(_time(f) - _time(s)).total_seconds() for s, f in jobs]
    print(f"series: {args.series} x {args.slices} slices 512x512, settle {args.settle:.1f} s, "
          f"receivers {args.receivers}")
    print(f"time to result (ack of last slice -> SR in Orthanc): "
          f"p50 {statistics.median(totals):.2f} s, p95 {percentile(totals, 95):.2f} s, "
          f"max {max(totals):.2f} s")
    print(f"  of which settle time: {args.settle:.2f} s; beyond it: "
          f"p50 {statistics.median(totals) - args.settle:.2f} s")
    print(f"worker time per series: p50 {statistics.median(workers):.2f} s "
          f"({args.slices / statistics.median(workers):.1f} slices/s)")
    print("all:", " ".join(f"{t:.2f}" for t in totals))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Triage throughput with 1, 2 and 4 stand-alone workers on PostgreSQL and one on SQLite, and
the idle memory of the node and of a worker.

For each configuration: a fresh database (a new one on a private PostgreSQL cluster on
loopback, or a SQLite file), the receiving node (`ichtriage serve --workers 0`) and N
`ichtriage worker` processes (one thread each) on one data dir. The `--series` phantom series
are sent first (DCMTK storescu, one association) and queued, held back (their jobs' run_after
set in the future) until every worker is ready; then released together. Throughput is the
series done divided by the time from the first claim to the last job finished, both from the
job table; "s per job" is the mean time from a job's claim to its end, "busy" the share of the
workers' time spent in jobs (near 100 %: they never waited on the queue, and a slower
throughput with more workers comes from each job getting less CPU). Idle memory: the resident set (VmRSS) of `serve` with its one in-process worker
(the supervisor, and its receiving processes apart) and of one stand-alone worker, each a few
seconds after `ready:`, on SQLite.

On a machine with few cores the ceiling is the CPU: each worker runs PyTorch with its own
intra-op threads, so more workers than cores compete for them. Prints numbers; never a test.

    TCP_NODELAY=1 PYTHONPATH=. .venv/bin/python tests/benchmarks/bench_workers.py \\
        --series 24 --slices 16 --size 128 --workers 1,2,4
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository, for tests.*

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from ml.phantom import write_series
from storage.db import upgrade
from tests.nodeproc import running_node, running_workers, wait_for, wait_ready
from tests.peers import postgres_server, run_storescu

HELD = "2999-01-01 00:00:00"


@dataclass(frozen=True)
class Run:
    label: str
    workers: int
    series: int
    seconds: float
    job_seconds: float  # mean claim -> done of one job

    @property
    def busy(self) -> float:
        """Share of the workers' time in jobs: near 1, they never waited for the queue."""
        return self.series * self.job_seconds / (self.workers * self.seconds)

    @property
    def per_minute(self) -> float:
        return 60 * self.series / self.seconds


def _time(value: object) -> datetime:
    """A timestamp as SQLite (text) or PostgreSQL (datetime) returns it."""
    return value if isinstance(value, datetime) else datetime.fromisoformat(str(value))


def _execute(url: str, sql: str) -> list[tuple[object, ...]]:
    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            result = conn.execute(text(sql))
            return [tuple(r) for r in result.all()] if result.returns_rows else []
    finally:
        engine.dispose()


def new_postgres_database(server_url: str, name: str) -> str:
    admin = create_engine(server_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return make_url(server_url).set(database=name).render_as_string(hide_password=False)


def measure(label: str, tmp: Path, url: str, inbox: Path, series: int, workers: int,
            env: dict[str, str] | None = None) -> Run:
    """Queue every series, hold the jobs, start `workers` workers, release the jobs; the
    time from the first claim to the last job done."""
    upgrade(url)
    with running_node(tmp / "node", db_url=url, workers=0, settle=0.5) as node:
        sent = run_storescu(inbox, node.port, aet="CT1", called_aet="ICHTRIAGE", timeout=600)
        if sent.returncode != 0:
            raise RuntimeError(f"storescu failed: {sent.stderr}")
        queued = "select count(*) from job"
        wait_for(lambda: node.query(queued) == [(series,)], timeout=120,
                 what=f"{series} jobs queued")
        # Held until every worker is ready, so that they all start on a full queue.
        _execute(url, f"update job set run_after = '{HELD}'")
        with running_workers(tmp, workers, data_dir=node.data_dir, db_url=url, env=env,
                             wait=False) as procs:
            for proc in procs:
                wait_ready(proc, timeout=300)
            _execute(url, "update job set run_after = created_at")
            finished = "select count(*) from job where status in ('done', 'failed')"
            wait_for(lambda: node.query(finished) == [(series,)], timeout=3600,
                     what="every job finished")
        rows = node.query("select started_at, finished_at, status, attempts from job")
        failed = [r for r in rows if r[2] != "done"]
        if failed:
            raise RuntimeError(f"{len(failed)} jobs not done: see {tmp}")
        starts = [_time(r[0]) for r in rows]
        ends = [_time(r[1]) for r in rows]
        seconds = (max(ends) - min(starts)).total_seconds()
        jobs = sum((e - s).total_seconds() for s, e in zip(starts, ends, strict=True))
        if any(r[3] != 1 for r in rows):
            print(f"  ({sum(r[3] != 1 for r in rows)} jobs needed more than one try)")
    return Run(label, workers, series, seconds, jobs / len(rows))


def rss_mib(pid: int) -> float:
    """Resident set of process `pid`, MiB (/proc/PID/status VmRSS)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def children(pid: int) -> list[tuple[str, int]]:
    """(what, pid) of the child processes of `pid`: a receiving process, or multiprocessing's
    resource tracker."""
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    found = []
    for child in map(int, out.split()):
        cmdline = Path(f"/proc/{child}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        found.append(("resource tracker" if "resource_tracker" in cmdline else "receiver",
                      child))
    return found


def idle_memory(tmp: Path, settle_s: float) -> None:
    url = f"sqlite:///{tmp / 'idle' / 'var' / 'ichtriage.db'}"
    with running_node(tmp / "idle", db_url=url, workers=1, receivers=2) as node:
        time.sleep(settle_s)
        kids = [(name, rss_mib(pid)) for name, pid in children(node.proc.pid)]
        supervisor = rss_mib(node.proc.pid)
        print(f"idle serve (1 in-process worker, 2 receivers, SQLite): supervisor "
              f"{supervisor:.0f} MiB; children "
              f"{', '.join(f'{name} {rss:.0f}' for name, rss in kids)} MiB; together "
              f"{supervisor + sum(r for _, r in kids):.0f} MiB")
    with running_node(tmp / "idle", db_url=url, workers=0, receivers=2) as node:
        time.sleep(settle_s)
        kids = [(name, rss_mib(pid)) for name, pid in children(node.proc.pid)]
        supervisor = rss_mib(node.proc.pid)
        print(f"idle serve --workers 0 (2 receivers, SQLite): supervisor {supervisor:.0f} MiB; "
              f"together {supervisor + sum(r for _, r in kids):.0f} MiB")
    with running_workers(tmp / "idle-worker", 1, data_dir=node.data_dir, db_url=url) as procs:
        time.sleep(settle_s)
        print(f"idle stand-alone worker (1 thread, SQLite): {rss_mib(procs[0].proc.pid):.0f} MiB")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--series", type=int, default=24)
    parser.add_argument("--slices", type=int, default=16)
    parser.add_argument("--size", type=int, default=128, help="rows and columns of a slice")
    parser.add_argument("--workers", default="1,2,4", help="worker counts on PostgreSQL")
    parser.add_argument("--no-sqlite", action="store_true", help="skip the SQLite run")
    parser.add_argument("--omp-threads", type=int, default=0,
                        help="OMP_NUM_THREADS of each worker (PyTorch's intra-op threads); "
                             "0: PyTorch's default, one per core")
    parser.add_argument("--memory-only", action="store_true",
                        help="only the idle memory, no throughput runs")
    parser.add_argument("--idle-seconds", type=float, default=5.0,
                        help="wait after ready before the resident sets are read")
    args = parser.parse_args()
    counts = [int(n) for n in args.workers.split(",")]
    env = {"OMP_NUM_THREADS": str(args.omp_threads)} if args.omp_threads else None
    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at start; "
          f"{args.series} series of {args.slices} slices of {args.size}x{args.size}; "
          f"OMP_NUM_THREADS {args.omp_threads or 'unset'}")
    with tempfile.TemporaryDirectory(prefix="ichtriage-workers-") as tmp_name:
        tmp = Path(tmp_name)
        inbox = tmp / "in"
        for i in range(args.series):
            write_series(inbox / f"s{i:03d}", seed=7000 + i, slices=args.slices,
                         size=args.size, subtypes=("subdural",) if i % 3 == 0 else ())
        if args.memory_only:
            idle_memory(tmp, args.idle_seconds)
            return 0
        runs: list[Run] = []
        with postgres_server(tmp / "pg") as server:
            for n in counts:
                url = new_postgres_database(server, f"w{n}")
                runs.append(measure(f"PostgreSQL, {n} worker{'s' if n > 1 else ''}",
                                    tmp / f"pg{n}", url, inbox, args.series, n, env))
                print(f"{runs[-1].label}: {runs[-1].per_minute:.1f} series/min "
                      f"({runs[-1].seconds:.1f} s), load {os.getloadavg()[0]:.1f}", flush=True)
        if not args.no_sqlite:
            url = f"sqlite:///{tmp / 'sqlite' / 'node' / 'var' / 'ichtriage.db'}"
            (tmp / "sqlite" / "node" / "var").mkdir(parents=True)
            runs.append(measure("SQLite, 1 worker", tmp / "sqlite", url, inbox, args.series, 1,
                                env))
            print(f"{runs[-1].label}: {runs[-1].per_minute:.1f} series/min "
                  f"({runs[-1].seconds:.1f} s)", flush=True)
        base = runs[0]
        print("\nconfiguration            series/min   ratio to the first   s per job   busy")
        for run in runs:
            print(f"{run.label:<24} {run.per_minute:>10.1f}   "
                  f"{run.per_minute / base.per_minute:>18.2f}   {run.job_seconds:>9.2f}   "
                  f"{run.busy:>4.0%}")
        idle_memory(tmp, args.idle_seconds)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

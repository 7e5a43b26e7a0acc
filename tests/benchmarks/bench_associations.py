"""What associations cost the node: CPU to set one up, and CPU while open ones sit idle.

Starts the node (``ichtriage serve``, SQLite, no triage workers) on loopback, then
  set-up   sends ``--files`` single CT slices, each in its own DCMTK storescu association
           (storescu proposes 120-odd presentation contexts), and prints the CPU of the
           node's child processes (its receiving processes, and multiprocessing's helper)
           and the wall time per association;
  idle     opens ``--idle`` associations with a pynetdicom SCU, leaves them idle for
           ``--seconds`` and prints the same processes' CPU meanwhile, in cores.
CPU is read from /proc (user + system of each process). A script that prints
numbers; never a test.

    TCP_NODELAY=1 .venv/bin/python tests/benchmarks/bench_associations.py
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository, for tests.*

from pynetdicom import AE

from tests.benchmarks.ctgen import write_ct_series
from tests.nodeproc import running_node
from tests.peers import LOOPBACK, dcmtk_tool, nodelay_env

TICKS = os.sysconf("SC_CLK_TCK")
VERIFICATION = "1.2.840.10008.1.1"


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU of `pids` so far, in seconds."""
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total / TICKS


def children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(child) for child in (task / "children").read_text().split()]
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=40, help="associations set up")
    parser.add_argument("--idle", type=int, default=8, help="associations left open")
    parser.add_argument("--seconds", type=float, default=5.0, help="how long they idle")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="ichtriage-assoc-") as tmp_name:
        tmp = Path(tmp_name)
        files = write_ct_series(tmp / "series", args.files, seed=7)
        with running_node(tmp / "node", env=nodelay_env(), workers=0) as node:
            receivers = children(node.proc.pid)
            before, start = cpu_seconds(receivers), time.perf_counter()
            for path in files:
                subprocess.run([dcmtk_tool("storescu"), "-aec", "ICHTRIAGE", LOOPBACK,
                                str(node.port), str(path)], env=nodelay_env(), check=True)
            wall = (time.perf_counter() - start) / len(files)
            cpu = (cpu_seconds(receivers) - before) / len(files)
            print(f"set-up: {len(files)} storescu associations of one slice each: "
                  f"{cpu * 1e3:.1f} ms of CPU and {wall * 1e3:.1f} ms wall each")

            scu = AE("BENCH")
            scu.add_requested_context(VERIFICATION)
            opened = [scu.associate(LOOPBACK, node.port, ae_title="ICHTRIAGE")
                      for _ in range(args.idle)]
            if not all(assoc.is_established for assoc in opened):
                raise RuntimeError("the node refused an association")
            time.sleep(1.0)
            before = cpu_seconds(receivers)
            time.sleep(args.seconds)
            idle = (cpu_seconds(receivers) - before) / args.seconds
            for assoc in opened:
                assoc.release()
            print(f"idle: {args.idle} open associations for {args.seconds:.0f} s: "
                  f"{idle:.3f} cores in the node's {len(receivers)} child processes together")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

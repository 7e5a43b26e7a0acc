"""C-FIND and C-MOVE speed: the node against Orthanc, on the same studies, in the same run.

Indexes N one-instance studies (default 10,000; the same files sent by DCMTK storescu to both),
then asks each the same STUDY level queries with DCMTK findscu (6 return keys, TCP_NODELAY=1):
  all       PatientName=*                          (every study)
  wildcard  PatientName=CHEN*                      (a tenth of them)
  one       PatientID=<one study's>                (one)
  month     StudyDate=20250101-20250131            (about 31/365 of them)
Each query runs twice per round: quietly for the wall time (the headline figure), and with
findscu -v to see when the first response came and to count the responses. Rounds alternate
node, Orthanc, node, ...; medians are printed. Then a C-MOVE of one 200-slice 512x512 series to
DCMTK storescp, from each, in slices/s.

This is a script that prints numbers, never a test.

    .venv/bin/python tests/benchmarks/bench_query.py --studies 10000 --repeats 3
"""

from __future__ import annotations

import argparse
import datetime as dt
import re
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository, for tests.*

from tests.benchmarks.ctgen import write_ct_series
from tests.factories import ct_slice
from tests.nodeproc import running_node
from tests.peers import (
    LOOPBACK,
    dcmtk_tool,
    free_port,
    nodelay_env,
    orthanc_server,
    storescp_server,
)

CALLING_AET = "BENCH"
SURNAMES = ("CHEN", "SMITH", "GARCIA", "MULLER", "ROSSI", "SILVA", "NOVAK", "KIM", "DUBOIS",
            "JONES")
RETURN_KEYS = ("PatientName", "PatientID", "StudyDate", "StudyInstanceUID", "AccessionNumber",
               "StudyDescription")
_RESPONSE = re.compile(r"Find Response: (\d+) \(Pending\)")


@dataclass(frozen=True)
class Peer:
    name: str
    aet: str
    port: int


def write_studies(folder: Path, n: int) -> str:
    """N one-instance studies (64x64 slices), names CHEN^..., SMITH^... in turn, dates over
    2025; returns the PatientID of one of them."""
    folder.mkdir(parents=True, exist_ok=True)
    first = dt.date(2025, 1, 1)
    for i in range(n):
        ds = ct_slice(study_uid=f"1.2.826.0.1.3680043.10.1001.{i + 1}",
                      series_uid=f"1.2.826.0.1.3680043.10.1002.{i + 1}", index=0, size=64,
                      patient_name=f"{SURNAMES[i % len(SURNAMES)]}^P{i}",
                      patient_id=f"BQ{i:05d}")
        ds.StudyDate = (first + dt.timedelta(days=i % 365)).strftime("%Y%m%d")
        ds.AccessionNumber = f"A{i:07d}"
        ds.save_as(folder / f"{i:05d}.dcm", enforce_file_format=True)
    return f"BQ{n // 2:05d}"


def storescu(peer: Peer, folder: Path) -> float:
    started = time.perf_counter()
    done = subprocess.run([dcmtk_tool("storescu"), "-aet", CALLING_AET, "-aec", peer.aet, "+sd", "+r",
                           "-to", "60", LOOPBACK, str(peer.port), str(folder)],
                          capture_output=True, text=True, env=nodelay_env(), check=False)
    if done.returncode != 0:
        raise RuntimeError(f"storescu to {peer.name} failed: {done.stderr[-2000:]}")
    return time.perf_counter() - started


def findscu(peer: Peer, keys: dict[str, str], *, verbose: bool) -> tuple[float, float, int]:
    """(seconds in all, seconds to the first response or nan, responses counted or -1)."""
    cmd = [dcmtk_tool("findscu"), "-S", "-aet", CALLING_AET, "-aec", peer.aet, "-to", "60"]
    if verbose:
        cmd.append("-v")
    cmd += ["-k", "QueryRetrieveLevel=STUDY"]
    for key in RETURN_KEYS:
        cmd += ["-k", f"{key}={keys.get(key, '')}"]
    cmd += [LOOPBACK, str(peer.port)]
    started = time.perf_counter()
    first, count = float("nan"), 0
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env=nodelay_env())
    assert proc.stderr is not None
    for line in proc.stderr:
        if _RESPONSE.search(line):
            count += 1
            if count == 1:
                first = time.perf_counter() - started
    proc.wait()
    total = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(f"findscu against {peer.name} exited with {proc.returncode}")
    return total, first, count if verbose else -1


def movescu(peer: Peer, sink_aet: str, study_uid: str, series_uid: str) -> float:
    started = time.perf_counter()
    done = subprocess.run([dcmtk_tool("movescu"), "-S", "-aet", CALLING_AET, "-aec", peer.aet,
                           "-aem", sink_aet, "-to", "120", "-k", "QueryRetrieveLevel=SERIES",
                           "-k", f"StudyInstanceUID={study_uid}",
                           "-k", f"SeriesInstanceUID={series_uid}", LOOPBACK, str(peer.port)],
                          capture_output=True, text=True, env=nodelay_env(), check=False)
    if done.returncode != 0 or "Failed" in done.stderr:
        raise RuntimeError(f"movescu from {peer.name} failed: {done.stderr[-2000:]}")
    return time.perf_counter() - started


def run(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="bench-query-") as tmp, ExitStack() as stack:
        work = Path(tmp)
        started = time.perf_counter()
        one_id = write_studies(work / "studies", args.studies)
        series = write_ct_series(work / "series", args.slices, size=512)
        print(f"wrote {args.studies} studies and a {args.slices}-slice series in "
              f"{time.perf_counter() - started:.1f} s", flush=True)
        sink_dir = work / "sink"
        sink_aet, sink_port = stack.enter_context(storescp_server(sink_dir))
        node = stack.enter_context(running_node(
            work / "node", "--move-destination", f"{sink_aet}@{LOOPBACK}:{sink_port}",
            receivers=args.receivers, ready_timeout=180))
        orthanc = stack.enter_context(orthanc_server(
            work, dicom_port=free_port(),
            # Orthanc answers C-FIND and C-MOVE only to modalities it knows
            known_modalities={"sink": (sink_aet, LOOPBACK, sink_port),
                              "bench": (CALLING_AET, LOOPBACK, 104)}))
        peers = [Peer("node", "ICHTRIAGE", node.port), Peer("orthanc", orthanc.aet,
                                                              orthanc.dicom_port)]
        for peer in peers:
            seconds = storescu(peer, work / "studies") + storescu(peer, work / "series")
            print(f"indexed in {peer.name}: {seconds:.1f} s", flush=True)
        queries = {"all": {"PatientName": "*"}, "wildcard": {"PatientName": "CHEN*"},
                   "one": {"PatientID": one_id}, "month": {"StudyDate": "20250101-20250131"}}
        totals: dict[tuple[str, str], list[float]] = {}
        firsts: dict[tuple[str, str], list[float]] = {}
        counts: dict[tuple[str, str], int] = {}
        for _round in range(args.repeats):
            for peer in peers:
                for name, keys in queries.items():
                    total, _, _ = findscu(peer, keys, verbose=False)
                    _, first, count = findscu(peer, keys, verbose=True)
                    totals.setdefault((peer.name, name), []).append(total)
                    firsts.setdefault((peer.name, name), []).append(first)
                    counts[(peer.name, name)] = count
        print(f"\nC-FIND, STUDY level, {len(RETURN_KEYS)} return keys, median of "
              f"{args.repeats} (s in all; s to the first response; responses/s)")
        for name in queries:
            line = [f"{name:9s}"]
            for peer in peers:
                total = statistics.median(totals[(peer.name, name)])
                first = statistics.median(firsts[(peer.name, name)])
                count = counts[(peer.name, name)]
                line.append(f"{peer.name}: {count:5d} in {total:6.3f} s, first {first:6.3f} s, "
                            f"{count / total:7.0f}/s")
            node_t = statistics.median(totals[("node", name)])
            orthanc_t = statistics.median(totals[("orthanc", name)])
            per_round = statistics.median(
                n / o for n, o in zip(totals[("node", name)], totals[("orthanc", name)],
                                      strict=True))
            line.append(f"node/orthanc time {node_t / orthanc_t:.2f} (per round "
                        f"{per_round:.2f})")
            print(" | ".join(line), flush=True)
        study_uid, series_uid = _uids(series[0])
        print(f"\nC-MOVE of a {args.slices}-slice series to storescp (slices/s)")
        rates: dict[str, list[float]] = {}
        for _round in range(args.repeats):
            for peer in peers:
                for f in sink_dir.iterdir():
                    f.unlink()
                seconds = movescu(peer, sink_aet, study_uid, series_uid)
                moved = len(list(sink_dir.iterdir()))
                rates.setdefault(peer.name, []).append(moved / seconds)
                print(f"{peer.name:8s} {moved} slices in {seconds:6.2f} s: "
                      f"{moved / seconds:6.0f}/s", flush=True)
        ratios = [n / o for n, o in zip(rates["node"], rates["orthanc"], strict=True)]
        print(f"median: node {statistics.median(rates['node']):.0f}/s, orthanc "
              f"{statistics.median(rates['orthanc']):.0f}/s; node/orthanc rate "
              f"{statistics.median(rates['node']) / statistics.median(rates['orthanc']):.2f} "
              f"(per round {statistics.median(ratios):.2f})", flush=True)


def _uids(path: Path) -> tuple[str, str]:
    from pydicom import dcmread

    ds = dcmread(path, stop_before_pixels=True)
    return str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--studies", type=int, default=10_000, help="one-instance studies")
    parser.add_argument("--slices", type=int, default=200, help="slices of the moved series")
    parser.add_argument("--repeats", type=int, default=3, help="rounds over the peers")
    parser.add_argument("--receivers", type=int, default=2, help="the node's receivers")
    return parser.parse_args(argv)


if __name__ == "__main__":
    run(parse_args())

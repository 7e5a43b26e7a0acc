"""Where a receiving process spends its time answering C-FIND and C-MOVE: cProfile of every
thread of one in-process receiving server (the node's own classes and handlers), while DCMTK
findscu or movescu asks it. Profiles count calls and CPU per function, so they say where the
time goes even on a loaded host, where wall-clock figures do not.

    # once: N one-instance studies and a 200-slice series, indexed by a node on WORK
    .venv/bin/python tests/benchmarks/profile_query.py populate --work /tmp/qr --studies 5000
    # then, as often as needed (what: all, one, month, move; --path fast or stock)
    .venv/bin/python tests/benchmarks/profile_query.py profile --work /tmp/qr --what move

This is a script that prints numbers, never a test.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository, for tests.*

from tests.benchmarks.bench_query import Peer, _uids, findscu, movescu, storescu, write_studies
from tests.benchmarks.ctgen import write_ct_series
from tests.nodeproc import running_node
from tests.peers import LOOPBACK, storescp_server

QUERIES = {"all": {"PatientName": "*"}, "month": {"StudyDate": "20250101-20250131"}}


def populate(work: Path, studies: int) -> None:
    one = write_studies(work / "in" / "studies", studies)
    write_ct_series(work / "in" / "series", 200, size=512)
    (work / "in" / "one-patient-id").write_text(one)
    with running_node(work / "node", receivers=1, ready_timeout=180) as node:
        peer = Peer("node", "ICHTRIAGE", node.port)
        print(f"indexed in {storescu(peer, work / 'in' / 'studies'):.1f} s and "
              f"{storescu(peer, work / 'in' / 'series'):.1f} s", flush=True)


def _server(work: Path, path: str, sink: tuple[str, int]) -> Any:
    """The node's receiving server on WORK's index, as make_receiving_server builds it."""
    from pydicom import config as pydicom_config

    from node.config import Destination, load_settings
    from node.dicom.qr_scp import QueryHandlers
    from node.dicom.receiver import make_receiving_server
    from node.dicom.store_scp import StoreHandlers
    from storage.associations import AssociationLog
    from storage.db import make_engine
    from storage.files import FileStore
    from storage.instances import InstanceStore

    pydicom_config.settings.reading_validation_mode = pydicom_config.IGNORE
    settings = load_settings(env={}, overrides={
        "data_dir": work / "node" / "var", "receive_path": path,
        "move_destination": (Destination.parse(f"{sink[0]}@{LOOPBACK}:{sink[1]}"),)})
    engine = make_engine(settings.database_url)
    files = FileStore(settings.files_dir, min_free_bytes=0)
    handlers = StoreHandlers(InstanceStore(engine, files), AssociationLog(engine),
                             ae_title=settings.ae_title)
    queries = QueryHandlers(engine, files, ae_title=settings.ae_title,
                            destinations=settings.move_destination)
    return make_receiving_server(settings, handlers, queries)


def profile(work: Path, what: str, path: str, top: int) -> None:
    with storescp_server(work / "sink") as sink:
        server = _server(work, path, (sink.aet, sink.port))
        listener = socket.create_server((LOOPBACK, 0))

        def accept() -> None:
            while True:
                conn, addr = listener.accept()
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                server.process_request(conn, addr)

        threading.Thread(target=accept, daemon=True).start()
        peer = Peer("node", "ICHTRIAGE", listener.getsockname()[1])
        study_uid, series_uid = _uids(sorted((work / "in" / "series").iterdir())[0])
        keys = QUERIES.get(what) or {"PatientID": (work / "in" / "one-patient-id").read_text()}

        def ask() -> float:
            if what == "move":
                return movescu(peer, sink.aet, study_uid, series_uid)
            return findscu(peer, keys, verbose=False)[0]

        ask()  # once unprofiled: the compiled SQL cached, files in the page cache
        profiles: list[cProfile.Profile] = []

        def start(*_args: object) -> None:  # each new thread profiles itself
            sys.setprofile(None)
            profiles.append(cProfile.Profile())
            profiles[-1].enable()

        threading.setprofile(start)
        cpu = time.process_time()
        seconds = ask()
        threading.setprofile(None)
        print(f"{what} ({path} path): {seconds:.3f} s wall; receiving process CPU "
              f"{time.process_time() - cpu:.3f} s (profiled)", flush=True)
        time.sleep(0.5)  # the association's threads end
        stats: pstats.Stats | None = None
        for p in profiles:
            p.create_stats()
            stats = pstats.Stats(p) if stats is None else stats.add(p)
        if stats is not None:
            stats.sort_stats("tottime").print_stats(top)
            stats.sort_stats("cumtime").print_stats(top)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("step", choices=("populate", "profile"))
    parser.add_argument("--work", type=Path, required=True, help="folder for files and index")
    parser.add_argument("--studies", type=int, default=5000, help="populate: studies")
    parser.add_argument("--what", choices=("all", "one", "month", "move"), default="all")
    parser.add_argument("--path", choices=("fast", "stock"), default="fast")
    parser.add_argument("--top", type=int, default=35, help="functions printed per table")
    return parser.parse_args(argv)


if __name__ == "__main__":
    args = parse_args()
    if args.step == "populate":
        populate(args.work, args.studies)
    else:
        profile(args.work, args.what, args.path, args.top)

"""HTTP API latency: worklist pages at N studies (first page and page 50, filtered and not),
one study's detail, a /metrics scrape, /healthz, and a 512x512 slice PNG. A script that
prints numbers; never a test.

The index is a real SQLite file migrated by the node's code, filled with N studies of one
series each (a third positive, some incomplete, the rest routine) by bulk inserts; requests
go through FastAPI's TestClient with a bearer token (scrypt once, then cached), so the
figures include routing, validation, the audit row and JSON, not the network.

    .venv/bin/python tests/benchmarks/bench_api.py --studies 10000 --repeats 30
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository

from fastapi.testclient import TestClient
from sqlalchemy import Engine, insert

from ml.labels import LABELS
from ml.phantom import write_series
from ml.windowing import load_slice
from node.http.app import create_app
from node.http.context import WebContext
from node.http.images import render_png
from storage.db import make_engine, upgrade
from storage.files import FileStore
from storage.models import Patient, Series, SeriesStatus, Study, TriageResult
from storage.tokens import TokenStore


def fill(engine: Engine, n: int, seed: int = 5) -> None:
    rng = random.Random(seed)
    start = datetime(2026, 1, 1, tzinfo=UTC)
    patients, studies, series, results = [], [], [], []
    for i in range(1, n + 1):
        when = start + timedelta(minutes=7 * i)
        patients.append({"id": i, "patient_key": f"P{i}", "patient_id": f"P{i}",
                         "created_at": when})
        studies.append({"id": i, "study_uid": f"1.2.826.0.9.{i}", "patient_pk": i,
                        "accession_number": f"A{i}", "study_date": when.strftime("%Y%m%d"),
                        "study_description": "CT HEAD", "created_at": when})
        series.append({"id": i, "series_uid": f"1.2.826.0.9.{i}.1", "study_pk": i,
                       "modality": "CT", "status": SeriesStatus.DONE, "instance_count": 32,
                       "first_received_at": when, "last_received_at": when, "revision": 1})
        kind = rng.random()
        finding = rng.choice(LABELS[1:])
        positive = kind < 0.33
        p_any = rng.uniform(0.5, 1.0) if positive else rng.uniform(0.0, 0.3)
        probs = dict.fromkeys(LABELS, 0.01) | {"any": p_any}
        calls = dict.fromkeys(LABELS, False)
        if positive:
            probs[finding] = p_any
            calls |= {"any": True, finding: True}
        results.append({"id": i, "series_pk": i, "series_revision": 1, "model_name": "ichnet",
                        "model_version": "bench", "probabilities": json.dumps(probs),
                        "calls": json.dumps(calls), "positive": positive,
                        "max_probability": p_any, "slices": 32, "created_at": when,
                        "latency_seconds": 3.0, "complete": not (0.33 <= kind < 0.38),
                        "notes": ""})
    with engine.begin() as conn:
        for model, rows in ((Patient, patients), (Study, studies), (Series, series),
                            (TriageResult, results)):
            for k in range(0, len(rows), 2000):
                conn.execute(insert(model), rows[k:k + 2000])


def timed(label: str, repeats: int, call: Callable[[], object]) -> None:
    call()  # warm
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        call()
        times.append((time.perf_counter() - t0) * 1000)
    times.sort()
    p95 = times[min(len(times) - 1, int(round(0.95 * (len(times) - 1))))]
    print(f"{label:44} p50 {statistics.median(times):7.1f} ms   p95 {p95:7.1f} ms")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--limit", type=int, default=50, help="rows per page")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ichtriage-api-") as tmp_name:
        tmp = Path(tmp_name)
        url = f"sqlite:///{tmp / 'index.db'}"
        upgrade(url)
        engine = make_engine(url)
        t0 = time.perf_counter()
        fill(engine, args.studies)
        print(f"{args.studies} studies inserted in {time.perf_counter() - t0:.1f} s")
        _, token = TokenStore(engine).create(name="bench", role="reader")
        headers = {"Authorization": f"Bearer {token}"}
        client = TestClient(create_app(WebContext(engine, FileStore(tmp / "data"))))

        def get(path: str, **params: object) -> dict[str, object]:
            r = client.get(path, params=params, headers=headers)
            r.raise_for_status()
            return r.json()  # type: ignore[no-any-return]

        def cursor_of_page(n: int, **params: object) -> str | None:
            cursor = None
            for _ in range(n - 1):
                page = get("/api/worklist", limit=args.limit, **params,
                           **({"cursor": cursor} if cursor else {}))
                cursor = page["next_cursor"]  # type: ignore[assignment]
            return cursor

        for name, params in (("", {}), (", finding=subdural", {"finding": "subdural"}),
                             (", sort=arrival", {"sort": "arrival"})):
            timed(f"worklist page 1{name}", args.repeats,
                  lambda p=params: get("/api/worklist", limit=args.limit, **p))
            cursor = cursor_of_page(50, **params)
            if cursor is None:
                print(f"worklist page 50{name}: fewer than 50 pages")
                continue
            timed(f"worklist page 50{name}", args.repeats,
                  lambda p=params, c=cursor: get("/api/worklist", limit=args.limit, cursor=c,
                                                 **p))
        timed("study detail", args.repeats, lambda: get("/api/studies/1.2.826.0.9.77"))
        # open routes: a scrape counts the index's tables in SQL; /healthz reads jobs only
        timed("/metrics scrape", args.repeats, lambda: client.get("/metrics").raise_for_status())
        timed("/healthz", args.repeats, lambda: client.get("/healthz"))
        series = write_series(tmp / "png", seed=3, slices=1, size=512)
        path = next((tmp / "png").glob("*.dcm"))
        timed("slice PNG 512x512: read + HU + window + PNG", args.repeats,
              lambda: render_png(load_slice(path)[1][0], "brain"))
        _, hu = load_slice(path)
        timed("slice PNG 512x512: window + PNG only", args.repeats,
              lambda: render_png(hu[0], "brain"))
        del series
        engine.dispose()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

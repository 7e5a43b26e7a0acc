"""The database down while the API serves: every route answers 503 with a short body and
one log line (no traceback), and serves again once the database is back. On a real
PostgreSQL stopped with `pg_ctl -m fast stop` and started again, and on SQLite whose file
cannot be opened."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from node.http.app import create_app
from node.http.context import WebContext
from storage.db import make_engine, upgrade
from storage.files import FileStore
from storage.tokens import TokenStore
from tests import peers
from tests.webdata import add_study, hours_ago

ORIGIN = "http://testserver"
DOWN = "the database does not answer"


def _routes(study_uid: str) -> list[tuple[str, str]]:
    return [("GET", "/api/worklist"), ("GET", "/api/queue"), ("GET", "/metrics"),
            ("GET", f"/api/studies/{study_uid}"), ("GET", "/dicom-web/studies"),
            ("GET", "/api/feedback/agreement"),
            ("POST", "/api/queue/deliveries/1/retry")]


def _check_down_and_back(client: TestClient, token: str, study_uid: str,
                         caplog: pytest.LogCaptureFixture, stop: Callable[[], None],
                         start: Callable[[], None]) -> None:
    headers = {"Authorization": f"Bearer {token}"}
    for method, url in _routes(study_uid):
        assert client.request(method, url, headers=headers).status_code != 503, url
    caplog.clear()
    stop()
    with caplog.at_level(logging.WARNING):
        for method, url in _routes(study_uid):
            r = client.request(method, url, headers=headers)
            assert r.status_code == 503, (url, r.text)
            assert r.json() == {"detail": DOWN} and r.headers["Retry-After"].isdigit()
        r = client.get("/healthz")
        assert r.status_code == 503 and r.json()["database"] is False
    lines = [rec for rec in caplog.records if rec.name == "node.http.outage"]
    assert len(lines) == len(_routes(study_uid))
    assert all(rec.exc_info is None and DOWN in rec.getMessage() for rec in lines)
    assert not [rec for rec in caplog.records if rec.exc_info]
    start()
    for method, url in _routes(study_uid):
        assert client.request(method, url, headers=headers).status_code != 503, url
    assert client.get("/api/worklist", headers=headers).json()["items"]


def _app(url: str, tmp_path: Path) -> tuple[WebContext, str, str]:
    upgrade(url)
    engine = make_engine(url)
    files = FileStore(tmp_path / "data")
    ref = add_study(engine, files, 1, p_any=0.81, findings=("subdural",),
                    arrived=hours_ago(1))
    token = TokenStore(engine).create(name="admin-1", role="admin")[1]
    ctx = WebContext(engine, files)
    return ctx, token, ref.study_uid


def test_sqlite_unreachable_gives_503_and_serving_resumes(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    db_dir, away = tmp_path / "db", tmp_path / "away"
    ctx, token, study_uid = _app(f"sqlite:///{db_dir / 'index.db'}", tmp_path)

    def stop() -> None:  # the file cannot be opened: its folder is gone
        db_dir.rename(away)
        ctx.engine.dispose()

    def start() -> None:
        away.rename(db_dir)

    with TestClient(create_app(ctx), base_url=ORIGIN) as client:
        _check_down_and_back(client, token, study_uid, caplog, stop, start)
    ctx.engine.dispose()


@pytest.mark.postgres
def test_postgres_stopped_gives_503_and_serving_resumes(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    if not peers.have_postgres():
        peers.missing_peer("PostgreSQL")
    with peers.postgres_cluster(tmp_path / "pg") as pg:
        ctx, token, study_uid = _app(pg.url, tmp_path)
        with TestClient(create_app(ctx), base_url=ORIGIN) as client:
            _check_down_and_back(client, token, study_uid, caplog, pg.stop, pg.start)
        ctx.engine.dispose()

"""The admin's queue over HTTP: who may see it, complete a receiving series now, retry a
failed series and a failed delivery; each only from the state it applies to, audited, and
from the page only with the session's CSRF token."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, insert, select, update

from node.dicom.eligibility import EligibilityRules
from node.http.app import create_app
from node.http.context import WebContext
from node.scheduler import SeriesMonitor
from storage.db import make_engine, upgrade
from storage.files import FileStore
from storage.jobs import JobQueue
from storage.models import AuditEvent, Delivery, Job, Series, SeriesStatus
from storage.series import SeriesIndex
from storage.tokens import TokenStore
from tests.webdata import add_study

ORIGIN = "http://testserver"


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[tuple[TestClient, Engine, dict[str, str]]]:
    url = f"sqlite:///{tmp_path / 'index.db'}"
    upgrade(url)
    engine = make_engine(url)
    files = FileStore(tmp_path / "data")
    failed = add_study(engine, files, 1, slices=2)
    add_study(engine, files, 2, slices=2)  # still receiving
    with engine.begin() as conn:
        conn.execute(update(Series).where(Series.id == failed.series_pk).values(
            status=SeriesStatus.FAILED, status_reason="RuntimeError: boom"))
        conn.execute(insert(Job).values(kind="triage", queueing_lock="series:1.2.826.0.1.1.1",
                                        series_pk=failed.series_pk, status="failed",
                                        attempts=3, last_error="RuntimeError: boom"))
        conn.execute(insert(Delivery).values(sop_uid="1.2.3.4", file_path="x.dcm",
                                             destination="PACS@127.0.0.1:104", status="failed",
                                             attempts=5, last_error="refused"))
    # an hour's settle time: "complete now" must not wait for it
    monitor = SeriesMonitor(SeriesIndex(engine), JobQueue(engine),
                            EligibilityRules.create(min_slices=1, body_parts=("HEAD",)),
                            settle_seconds=3600)
    store = TokenStore(engine)
    tokens = {role: store.create(name=f"{role}-1", role=role)[1]
              for role in ("reader", "radiologist", "admin")}
    ctx = WebContext(engine, files, monitor=monitor)
    with TestClient(create_app(ctx), base_url=ORIGIN) as client:
        yield client, engine, tokens
    engine.dispose()


def test_the_queue_and_its_actions(setup: tuple[TestClient, Engine, dict[str, str]]) -> None:
    client, engine, tokens = setup
    admin = {"Authorization": f"Bearer {tokens['admin']}"}
    for role in ("reader", "radiologist"):
        assert client.get("/api/queue", headers={"Authorization": f"Bearer {tokens[role]}"}
                          ).status_code == 403
    queue = client.get("/api/queue", headers=admin).json()
    assert [(j["status"], j["series_uid"]) for j in queue["jobs"]] == [
        ("failed", "1.2.826.0.1.1.1")]
    assert [r["series_uid"] for r in queue["receiving"]] == ["1.2.826.0.1.2.1"]
    assert [(d["status"], d["attempts"]) for d in queue["deliveries"]] == [("failed", 5)]

    done = client.post("/api/queue/series/1.2.826.0.1.2.1/complete", headers=admin)
    assert done.status_code == 200 and done.json() == {"outcome": "queued"}
    assert client.post("/api/queue/series/1.2.826.0.1.2.1/complete", headers=admin
                       ).status_code == 409
    assert client.post("/api/queue/series/1.2.826.0.1.1.1/retry", headers=admin
                       ).status_code == 200
    assert client.post("/api/queue/series/1.2.826.0.1.1.1/retry", headers=admin
                       ).status_code == 409
    assert client.post("/api/queue/deliveries/1/retry", headers=admin).status_code == 200
    assert client.post("/api/queue/deliveries/1/retry", headers=admin).status_code == 409
    assert client.post("/api/queue/deliveries/0/retry", headers=admin).status_code == 422
    for unknown in ("/api/queue/series/1.2.9.9/complete", "/api/queue/series/1.2.9.9/retry",
                    "/api/queue/deliveries/99/retry"):  # docs/http.md: unknown -> 404
        r = client.post(unknown, headers=admin)
        assert r.status_code == 404, (unknown, r.status_code)
    with engine.connect() as conn:
        statuses = dict(conn.execute(select(Series.series_uid, Series.status)).all())
        queued = conn.execute(select(Job.status).where(Job.queueing_lock ==
                                                       "series:1.2.826.0.1.2.1")).scalars()
        delivery = conn.execute(select(Delivery.status, Delivery.attempts)).one()
        actions = conn.execute(select(AuditEvent.action)).scalars().all()
    assert statuses == {"1.2.826.0.1.1.1": SeriesStatus.RECEIVING,
                        "1.2.826.0.1.2.1": SeriesStatus.QUEUED}
    assert list(queued) == ["queued"] and tuple(delivery) == ("pending", 0)
    assert ["complete_series", "retry_series", "retry_delivery"] == [
        a for a in actions if a in ("complete_series", "retry_series", "retry_delivery")]


def test_the_queue_page_needs_the_csrf_token(
        setup: tuple[TestClient, Engine, dict[str, str]]) -> None:
    client, engine, tokens = setup
    r = client.post("/login", data={"token": tokens["admin"]}, headers={"Origin": ORIGIN},
                    follow_redirects=False)
    assert r.status_code == 303
    page = client.get("/queue")
    assert page.status_code == 200 and 'class="retry_delivery"' in page.text
    assert 'class="complete_series"' in page.text
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
    assert csrf is not None
    form = {"action": "retry_delivery", "target": "1"}
    assert client.post("/queue", data=form | {"csrf_token": "forged"},
                       headers={"Origin": ORIGIN}).status_code == 403
    assert client.post("/queue", data=form | {"csrf_token": csrf.group(1)},
                       headers={"Origin": "http://evil.example"}).status_code == 403
    with engine.connect() as conn:
        assert conn.execute(select(Delivery.status)).scalar_one() == "failed"
    r = client.post("/queue", data=form | {"csrf_token": csrf.group(1)},
                    headers={"Origin": ORIGIN}, follow_redirects=False)
    assert r.status_code == 303
    with engine.connect() as conn:
        assert conn.execute(select(Delivery.status)).scalar_one() == "pending"
    assert client.post("/queue", data={"action": "drop_table", "target": "1",
                                       "csrf_token": csrf.group(1)},
                       headers={"Origin": ORIGIN}).status_code == 422


def test_a_page_action_in_the_wrong_state_comes_back_in_words(
        setup: tuple[TestClient, Engine, dict[str, str]]) -> None:
    """Retrying a delivery twice from /queue: the second finds it pending, and the page says
    so (a redirect back with a notice), never the API's raw JSON."""
    client, engine, tokens = setup
    client.post("/login", data={"token": tokens["admin"]}, headers={"Origin": ORIGIN})
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', client.get("/queue").text)
    assert csrf is not None
    form = {"action": "retry_delivery", "target": "1", "csrf_token": csrf.group(1)}
    notices = []
    for _ in range(2):
        r = client.post("/queue", data=form, headers={"Origin": ORIGIN}, follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"].startswith("/queue?notice=")
        page = client.get(r.headers["location"])
        assert page.status_code == 200 and "text/html" in page.headers["content-type"]
        found = re.search(r'<p class="notice" id="notice" role="status">([^<]+)</p>', page.text)
        assert found is not None
        notices.append(found.group(1))
    assert notices[0] == "Done." and "no longer in a state" in notices[1]
    gone = form | {"target": "999"}
    r = client.post("/queue", data=gone, headers={"Origin": ORIGIN})
    assert r.status_code == 200 and "no such series or delivery" in r.text
    r = client.post("/queue", data=form | {"target": "99999999999999999999"},
                    headers={"Origin": ORIGIN})
    assert r.status_code == 422  # not a row id: a bad form, not a state
    with engine.connect() as conn:
        assert conn.execute(select(Delivery.status)).scalar_one() == "pending"

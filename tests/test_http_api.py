"""The HTTP API through FastAPI's TestClient, on a real SQLite index migrated by the node's
own code and real DICOM files: tokens and roles, the worklist and its pages, a study, slice
PNGs, feedback and its CSRF checks, health, metrics and the audit trail."""

from __future__ import annotations

import io
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pydicom
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from sqlalchemy import Engine, func, insert, select, text, update

from ml.windowing import WINDOWS, apply_window, to_hounsfield
from node.http.app import create_app
from node.http.context import WebContext
from storage.associations import AssociationLog
from storage.db import make_engine, upgrade
from storage.files import FileStore
from storage.models import AuditEvent, Feedback, Job, TriageResult, WorkerBeat
from storage.tokens import TokenStore
from storage.worker_beats import STALE_SECONDS, WorkerBeats
from storage.worklist import worklist
from tests.webdata import StudyRef, add_study, hours_ago

ORIGIN = "http://testserver"


@dataclass
class Web:
    client: TestClient
    engine: Engine
    files: FileStore
    tokens: dict[str, str]
    studies: dict[str, StudyRef]

    def auth(self, role: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[role]}"}

    def count(self, model: type) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(model)).scalar_one())


@pytest.fixture
def web(tmp_path: Path) -> Iterator[Web]:
    url = f"sqlite:///{tmp_path / 'index.db'}"
    upgrade(url)
    engine = make_engine(url)
    files = FileStore(tmp_path / "data")
    studies = {
        "routine_old": add_study(engine, files, 1, p_any=0.05, arrived=hours_ago(5)),
        "sdh": add_study(engine, files, 2, p_any=0.81, findings=("subdural",),
                         arrived=hours_ago(4), study_date="20261125"),
        "iph": add_study(engine, files, 3, p_any=0.97, findings=("intraparenchymal",),
                         arrived=hours_ago(3)),
        "gap": add_study(engine, files, 4, p_any=0.04, complete=False, arrived=hours_ago(2)),
        "waiting": add_study(engine, files, 5, arrived=hours_ago(1)),
    }
    store = TokenStore(engine)
    tokens = {role: store.create(name=f"{role}-1", role=role)[1]
              for role in ("reader", "radiologist", "admin")}
    with TestClient(create_app(WebContext(engine, files)), base_url=ORIGIN) as client:
        yield Web(client, engine, files, tokens, studies)
    engine.dispose()


def test_open_routes_and_refusals(web: Web) -> None:
    c = web.client
    assert c.get("/healthz").json()["database"] is True  # 503: no worker (below)
    assert c.get("/openapi.json").json()["info"]["title"] == "ichtriage"
    assert c.get("/metrics").status_code == 200
    for path in ("/api/worklist", f"/api/studies/{web.studies['sdh'].study_uid}"):
        r = c.get(path)
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
        assert c.get(path, headers={"Authorization": "Bearer icht_1_" + "x" * 43}
                     ).status_code == 401
        assert c.get(path, headers={"Authorization": "Bearer nonsense"}).status_code == 401
        assert c.get(path, headers=web.auth("reader")).status_code == 200
    body = {"labels": {"subdural": True}}
    uid = web.studies["sdh"].study_uid
    r = c.post(f"/api/studies/{uid}/feedback", json=body, headers=web.auth("reader"))
    assert r.status_code == 403 and web.count(Feedback) == 0
    r = c.get("/api/worklist", headers=web.auth("reader"))
    assert r.headers["content-security-policy"].startswith("default-src 'none'")


def test_health_reports_a_stopped_worker(web: Web) -> None:
    def health() -> tuple[int, dict[str, object]]:
        r = web.client.get("/healthz")
        return r.status_code, r.json()

    code, body = health()  # no worker has ever run
    assert code == 503 and body["worker_alive"] is False and body["status"] == "degraded"
    assert body["problems"] == [f"no triage worker alive: none beat in the last "
                                f"{STALE_SECONDS:.0f} s and none holds a job"]
    beats = WorkerBeats(web.engine)
    beats.beat("gpu1:7:1")
    code, body = health()
    assert (code, body["worker_alive"], body["workers_beating"], body["problems"]) == (
        200, True, 1, [])
    with web.engine.begin() as conn:  # it died without a word: its beat grows old
        conn.execute(update(WorkerBeat).values(
            seen_at=datetime.now(UTC) - timedelta(seconds=STALE_SECONDS + 1)))
    code, body = health()
    assert code == 503 and body["worker_alive"] is False and body["last_worker_beat_at"]
    with web.engine.begin() as conn:  # a worker deep in a long job renews its lease only
        conn.execute(insert(Job).values(
            kind="triage", queueing_lock="x", series_pk=web.studies["waiting"].series_pk,
            status="running", worker="gpu2:8:1",
            lease_expires_at=datetime.now(UTC) + timedelta(seconds=30)))
    assert health()[0] == 200
    with web.engine.begin() as conn:
        conn.execute(update(Job).values(status="done"))
    beats.beat("gpu1:7:1")
    assert health()[0] == 200
    beats.gone("gpu1:7:1")  # a worker that stops says so at once
    code, body = health()
    assert code == 503 and body["queue_depth"] == 0 and body["database"] is True
    assert "ichtriage_workers_alive 0.0" in web.client.get("/metrics").text


def test_the_sr_is_shown_as_text(web: Web) -> None:
    ref = add_study(web.engine, web.files, 6, p_any=0.9, findings=("subdural",),
                    with_sr=True, patient_name="SRSECRET^NAME")
    r = web.client.get(f"/api/studies/{ref.study_uid}", headers=web.auth("reader"))
    result = next(s["result"] for s in r.json()["series"] if s["result"])
    text_ = result["sr_text"]
    assert result["sr_uid"] and result["inference_seconds"] == 0.04
    lines = text_.splitlines()
    assert lines[0] == "Imaging Measurement Report [COMPLETE, UNVERIFIED]"
    assert "    Measurement Group" in lines
    assert "      Algorithm Name: ichnet_seq" in lines
    assert "      Algorithm Version: v1test" in lines
    probability = next(i for i, line in enumerate(lines) if "Probability of subdural" in line)
    assert lines[probability].strip().endswith(": 0.9")
    assert lines[probability + 1].strip().startswith(  # the key image: slice 3 of the curve
        "Source of Measurement: slice 3 of 4 (1.2.")
    assert any(line.strip() == "Subdural hemorrhage: Present" for line in lines), text_
    assert any(line.strip() == "Source of Measurement: 4 images" for line in lines), text_
    assert "SRSECRET" not in r.text and "PID-6" not in r.text
    _login(web, "reader")
    page = web.client.get(f"/studies/{ref.study_uid}")
    assert 'id="sr-text"' in page.text and "Subdural hemorrhage: Present" in page.text
    no_sr = web.client.get(f"/api/studies/{web.studies['sdh'].study_uid}",
                           headers=web.auth("reader")).json()
    assert [s["result"]["sr_text"] for s in no_sr["series"]] == [None]


def test_a_revoked_token_stops_at_once(web: Web) -> None:
    headers = web.auth("reader")
    assert web.client.get("/api/worklist", headers=headers).status_code == 200  # cached now
    assert TokenStore(web.engine).revoke(1)
    assert web.client.get("/api/worklist", headers=headers).status_code == 401


def test_the_worklist_is_the_storage_order_in_dicom_keywords(web: Web) -> None:
    r = web.client.get("/api/worklist", headers=web.auth("reader"))
    items = r.json()["items"]
    assert [i["StudyInstanceUID"] for i in items] == [e.study_uid for e in worklist(web.engine)]
    s = web.studies
    assert [i["StudyInstanceUID"] for i in items] == [
        s["iph"].study_uid, s["sdh"].study_uid, s["gap"].study_uid,
        s["routine_old"].study_uid, s["waiting"].study_uid]
    assert [i["priority"] for i in items] == ["high", "high", "incomplete", "routine",
                                              "routine"]
    first = items[0]
    assert first["calls"]["intraparenchymal"] is True and first["probabilities"]["any"] == 0.97
    assert first["AccessionNumber"] == "ACC3" and first["status"] == "done"
    assert r.json()["next_cursor"] is None
    assert "SECRET" not in r.text and "PID-" not in r.text  # no patient names or IDs


def test_keyset_pages_cover_the_list_once(web: Web) -> None:
    for sort in ("priority", "arrival"):
        seen: list[str] = []
        cursor = None
        for _ in range(5):
            params = {"limit": 2, "sort": sort} | ({"cursor": cursor} if cursor else {})
            r = web.client.get("/api/worklist", params=params, headers=web.auth("reader"))
            assert r.status_code == 200, r.text
            page = r.json()
            seen += [i["StudyInstanceUID"] for i in page["items"]]
            cursor = page["next_cursor"]
            if cursor is None:
                break
        full = web.client.get("/api/worklist", params={"sort": sort},
                              headers=web.auth("reader")).json()["items"]
        assert seen == [i["StudyInstanceUID"] for i in full] and len(seen) == 5
    arrival = [i["StudyInstanceUID"] for i in full]
    assert arrival[0] == web.studies["waiting"].study_uid  # newest first


def test_filters_and_bad_arguments(web: Web) -> None:
    def uids(**params: object) -> list[str]:
        r = web.client.get("/api/worklist", params=params, headers=web.auth("reader"))
        assert r.status_code == 200, r.text
        return [i["StudyInstanceUID"] for i in r.json()["items"]]

    s = web.studies
    assert uids(finding="subdural") == [s["sdh"].study_uid]
    assert uids(priority="incomplete") == [s["gap"].study_uid]
    assert uids(status="receiving") == [s["waiting"].study_uid]
    assert uids(study_date_from="20261125", study_date_to="20261125") == [s["sdh"].study_uid]
    bad = [{"limit": 0}, {"limit": 501}, {"sort": "name"}, {"status": "lost"},
           {"finding": "tumour"}, {"study_date_from": "2026-11-25"}]
    for params in bad:
        r = web.client.get("/api/worklist", params=params, headers=web.auth("reader"))
        assert r.status_code == 422, params
    for cursor in ("garbage!", "W10", "WyJhcnJpdmFsIiwiMjAyNiIsMV0"):
        r = web.client.get("/api/worklist", params={"cursor": cursor},
                           headers=web.auth("reader"))
        assert r.status_code == 400, cursor


def test_a_study_in_detail(web: Web) -> None:
    ref = web.studies["sdh"]
    r = web.client.get(f"/api/studies/{ref.study_uid}", headers=web.auth("reader"))
    assert r.status_code == 200
    study = r.json()
    assert study["StudyInstanceUID"] == ref.study_uid and study["summary"]["priority"] == "high"
    (series,) = study["series"]
    assert series["SeriesInstanceUID"] == ref.series_uid
    assert series["NumberOfSeriesRelatedInstances"] == 4
    result = series["result"]
    assert result["calls"]["subdural"] is True and result["model_version"] == "v1test"
    assert [p["position"] for p in result["curve"]] == [0, 1, 2, 3]
    assert result["key_slices"] == [
        {"label": "any", "position": 2, "probability": 0.81},
        {"label": "subdural", "position": 2, "probability": 0.81}]
    assert study["feedback_result_id"] == ref.result_pk and study["feedback"] == []
    assert "SECRET" not in r.text
    assert web.client.get("/api/studies/1.2.3.999", headers=web.auth("reader")
                          ).status_code == 404
    assert web.client.get("/api/studies/1.2.x", headers=web.auth("reader")).status_code == 422


def _png(web: Web, ref: StudyRef, index: int, window: str) -> np.ndarray:
    r = web.client.get(f"/api/studies/{ref.study_uid}/series/{ref.series_uid}/slices/"
                       f"{index}.png", params={"window": window}, headers=web.auth("reader"))
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    return np.asarray(Image.open(io.BytesIO(r.content)))


def test_slice_pngs_through_each_window(web: Web) -> None:
    ref = web.studies["sdh"]
    with web.engine.connect() as conn:
        path = conn.execute(text("SELECT file_path FROM instance WHERE id = :pk"),
                            {"pk": ref.instance_pks[2]}).scalar_one()
    hu = to_hounsfield(pydicom.dcmread(web.files.path_of(path)))[0]
    for window in ("brain", "subdural", "bone"):
        png = _png(web, ref, 2, window)
        expected = np.rint(apply_window(hu, WINDOWS[window]) * 255).astype(np.uint8)
        assert png.shape == (32, 32) and np.array_equal(png, expected)
    assert not np.array_equal(_png(web, ref, 2, "brain"), _png(web, ref, 2, "bone"))
    assert not np.array_equal(_png(web, ref, 0, "bone"), _png(web, ref, 3, "bone"))
    base = f"/api/studies/{ref.study_uid}/series/{ref.series_uid}/slices"
    for path, code in ((f"{base}/4.png", 404), (f"{base}/-1.png", 422),
                       (f"{base}/0.png?window=lung", 422),
                       (f"/api/studies/{ref.study_uid}/series/1.2.3/slices/0.png", 404),
                       (f"/api/studies/1.2.3/series/{ref.series_uid}/slices/0.png", 404)):
        assert web.client.get(path, headers=web.auth("reader")).status_code == code, path
    waiting = web.studies["waiting"]  # no result: instance order
    assert _png(web, waiting, 3, "bone").shape == (32, 32)


def test_feedback_by_bearer_lands_in_sql(web: Web) -> None:
    ref = web.studies["sdh"]
    url = f"/api/studies/{ref.study_uid}/feedback"
    body = {"result_id": ref.result_pk, "labels": {"subdural": True, "epidural": True}}
    r = web.client.post(url, json=body, headers=web.auth("radiologist"))
    assert r.status_code == 201, r.text
    assert {(f["label"], f["verdict"]) for f in r.json()} == {("subdural", "confirm"),
                                                             ("epidural", "correct")}
    with web.engine.connect() as conn:
        rows = conn.execute(text("SELECT label, present, model_call, verdict, author "
                                 "FROM feedback ORDER BY label")).all()
    assert [tuple(r) for r in rows] == [("epidural", 1, 0, "correct", "radiologist-1"),
                                       ("subdural", 1, 1, "confirm", "radiologist-1")]
    detail = web.client.get(f"/api/studies/{ref.study_uid}", headers=web.auth("reader")).json()
    assert len(detail["feedback"]) == 2
    agreement = web.client.get("/api/feedback/agreement", headers=web.auth("reader")).json()
    assert {(a["label"], a["confirmed"], a["corrected"]) for a in agreement["overall"]} == {
        ("epidural", 0, 1), ("subdural", 1, 0)}
    (today,) = {a["day"] for a in agreement["by_day"]}
    assert len(today) == 10 and {a["label"] for a in agreement["by_day"]} == {"epidural",
                                                                                "subdural"}
    refused = [
        ({"labels": {"tumour": True}}, 422),
        ({"labels": {}}, 422),
        ({"labels": {"any": True}, "extra": 1}, 422),
        ({"result_id": web.studies["iph"].result_pk, "labels": {"any": True}}, 422),
    ]
    for payload, code in refused:
        assert web.client.post(url, json=payload, headers=web.auth("radiologist")
                               ).status_code == code, payload
    assert web.client.post("/api/studies/1.2.3.999/feedback", json={"labels": {"any": True}},
                           headers=web.auth("radiologist")).status_code == 404
    big = json.dumps({"labels": {"any": True}, "pad": "x" * 70_000})
    r = web.client.post(url, content=big, headers=web.auth("radiologist") | {
        "Content-Type": "application/json"})
    assert r.status_code == 413

    def chunks() -> Iterator[bytes]:  # no Content-Length: refused before it is read
        yield b'{"labels": {"any": true}}'

    r = web.client.post(url, content=chunks(), headers=web.auth("radiologist") | {
        "Content-Type": "application/json"})
    assert r.status_code == 411
    assert web.count(Feedback) == 2


def _login(web: Web, role: str) -> str:
    r = web.client.post("/login", data={"token": web.tokens[role]}, headers={"Origin": ORIGIN},
                        follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/"
    cookie = r.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/" in cookie
    assert web.tokens[role] not in cookie
    page = web.client.get(f"/studies/{web.studies['sdh'].study_uid}")
    match = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
    assert match is not None
    return match.group(1)


def test_log_in_and_page_feedback_needs_origin_and_csrf_token(web: Web) -> None:
    c = web.client
    r = c.get("/", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/login"
    bad = c.post("/login", data={"token": "icht_2_" + "y" * 43}, headers={"Origin": ORIGIN})
    assert bad.status_code == 401 and "not valid" in bad.text
    assert c.post("/login", data={"token": web.tokens["reader"]},
                  headers={"Origin": "http://evil.example"}).status_code == 403
    csrf = _login(web, "radiologist")
    ref = web.studies["sdh"]
    url = f"/studies/{ref.study_uid}/feedback"
    form = {"csrf_token": csrf, "result_id": str(ref.result_pk), "label_subdural": "absent"}
    attacks = [
        (form, {"Origin": "http://evil.example"}),
        (form | {"csrf_token": "forged"}, {"Origin": ORIGIN}),
        (form, {}),  # neither Origin nor Referer
    ]
    for data, headers in attacks:
        r = c.post(url, data=data, headers=headers, follow_redirects=False)
        assert r.status_code == 403, (data, headers)
    # the JSON API with the cookie also needs the CSRF header
    assert c.post(f"/api/studies/{ref.study_uid}/feedback", json={"labels": {"any": True}},
                  headers={"Origin": ORIGIN}).status_code == 403
    assert web.count(Feedback) == 0
    r = c.post(url, data=form, headers={"Origin": ORIGIN}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"].endswith("#feedback")
    assert web.count(Feedback) == 1
    page = c.get(f"/studies/{ref.study_uid}")
    assert "subdural absent (correct)" in page.text
    assert c.post("/logout", headers={"Origin": ORIGIN}, follow_redirects=False
                  ).status_code == 303
    assert c.get("/", follow_redirects=False).status_code == 303


def test_a_reader_session_sees_pages_but_cannot_give_feedback(web: Web) -> None:
    csrf = _login(web, "reader")
    page = web.client.get("/")
    assert page.status_code == 200 and "/static/worklist.js" in page.text
    ref = web.studies["sdh"]
    study = web.client.get(f"/studies/{ref.study_uid}")
    assert 'name="label_subdural"' not in study.text and "/slices/2.png" in study.text
    r = web.client.post(f"/studies/{ref.study_uid}/feedback", follow_redirects=False,
                        data={"csrf_token": csrf, "label_any": "present"},
                        headers={"Origin": ORIGIN})
    assert r.status_code == 403 and web.count(Feedback) == 0


def test_a_session_survives_a_restart_and_ends_with_its_token(web: Web) -> None:
    from storage.models import WebSession
    from storage.web_sessions import sid_digest

    csrf = _login(web, "radiologist")
    sid = web.client.cookies["ichtriage_session"]
    with web.engine.connect() as conn:
        rows = conn.execute(select(WebSession.sid_sha256, WebSession.role,
                                   WebSession.token_pk)).all()
    assert [tuple(r) for r in rows] == [(sid_digest(sid), "radiologist", 2)]  # no raw id
    ref = web.studies["sdh"]
    # a new process: a new app and context on the same database, the browser's cookie
    with TestClient(create_app(WebContext(web.engine, web.files)), base_url=ORIGIN) as again:
        again.cookies.set("ichtriage_session", sid)
        assert again.get("/", follow_redirects=False).status_code == 200
        r = again.post(f"/studies/{ref.study_uid}/feedback", follow_redirects=False,
                       data={"csrf_token": csrf, "label_subdural": "present"},
                       headers={"Origin": ORIGIN})
        assert r.status_code == 303 and web.count(Feedback) == 1  # the same CSRF token
        assert TokenStore(web.engine).revoke(2)
        assert again.get("/", follow_redirects=False).status_code == 303  # to /login
        assert again.get("/api/worklist").status_code == 401
    assert web.count(WebSession) == 0


def test_audit_names_who_and_which_study_never_the_patient(web: Web) -> None:
    ref = web.studies["iph"]
    web.client.get("/api/worklist", headers=web.auth("reader"))
    web.client.get(f"/api/studies/{ref.study_uid}", headers=web.auth("reader"))
    web.client.get(f"/api/studies/{ref.study_uid}/series/{ref.series_uid}/slices/0.png",
                   headers=web.auth("reader"))
    web.client.post(f"/api/studies/{ref.study_uid}/feedback", json={"labels": {"any": True}},
                    headers=web.auth("radiologist"))
    _login(web, "admin")
    with web.engine.connect() as conn:
        rows = conn.execute(select(AuditEvent.actor, AuditEvent.action, AuditEvent.study_uid)
                            .order_by(AuditEvent.id)).all()
        everything = " ".join(str(v) for r in conn.execute(select(AuditEvent)).all() for v in r)
    assert [tuple(r) for r in rows[:4]] == [
        ("reader-1", "worklist_view", ""), ("reader-1", "study_view", ref.study_uid),
        ("reader-1", "image_view", ref.study_uid), ("radiologist-1", "feedback", ref.study_uid)]
    assert ("admin-1", "login", "") in [tuple(r) for r in rows]
    assert "SECRET" not in everything and "PID-" not in everything


def test_metrics_are_counted_from_sql(web: Web) -> None:
    web.client.post(f"/api/studies/{web.studies['sdh'].study_uid}/feedback",
                    json={"result_id": web.studies["sdh"].result_pk,
                          "labels": {"subdural": False}}, headers=web.auth("radiologist"))
    started = datetime.now(UTC) - timedelta(minutes=5)
    with web.engine.begin() as conn:
        conn.execute(update(TriageResult).where(TriageResult.id == web.studies["sdh"].result_pk)
                     .values(inference_seconds=0.3))
        conn.execute(insert(Job).values(
            kind="triage", queueing_lock="x", series_pk=web.studies["sdh"].series_pk,
            status="done", started_at=started, finished_at=started + timedelta(seconds=7)))
    log = AssociationLog(web.engine)  # as the receiving processes count
    log.rejected("calling_ae_not_recognized")
    log.rejected("calling_ae_not_recognized")
    log.refused({0xA700: 2, 0x0124: 1})
    text_ = web.client.get("/metrics").text

    def value(name: str) -> float:
        match = re.search(rf"^{re.escape(name)} (\S+)$", text_, re.M)
        assert match is not None, name
        return float(match.group(1))

    assert value("ichtriage_instances_received_total") == 20.0
    assert value("ichtriage_results_total") == 4.0
    assert value('ichtriage_positive_rate{label="subdural"}') == 0.25
    assert value('ichtriage_series{status="receiving"}') == 1.0
    assert value("ichtriage_queue_depth") == 0.0
    assert value('ichtriage_feedback_agreement{label="subdural"}') == 0.0
    assert value('ichtriage_feedback_judged{label="subdural"}') == 1.0
    assert value('ichtriage_feedback_verdicts_total{label="subdural",verdict="correct"}') == 1.0
    assert value('ichtriage_associations_rejected_total{reason="calling_ae_not_recognized"}'
                 ) == 2.0
    assert value('ichtriage_stores_refused_total{status="0xA700"}') == 2.0
    assert value('ichtriage_stores_refused_total{status="0x0124"}') == 1.0
    # three results at 0.04 s (tests.webdata), the fourth at 0.3 s
    assert value('ichtriage_inference_seconds_bucket{le="0.25"}') == 3.0
    assert value('ichtriage_inference_seconds_bucket{le="0.5"}') == 4.0
    assert value("ichtriage_inference_seconds_count") == 4.0
    assert abs(value("ichtriage_inference_seconds_sum") - 0.42) < 1e-9
    assert value('ichtriage_job_seconds_bucket{le="5"}') == 0.0
    assert value('ichtriage_job_seconds_bucket{le="10"}') == 1.0
    assert abs(value("ichtriage_job_seconds_sum") - 7.0) < 1e-3
    assert value('ichtriage_result_latency_seconds_bucket{le="+Inf"}') == 4.0


def test_metrics_can_be_turned_off(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'index.db'}"
    upgrade(url)
    engine = make_engine(url)
    try:
        app = create_app(WebContext(engine, FileStore(tmp_path), metrics=False))
        WorkerBeats(engine).beat("gpu1:7:1")
        with TestClient(app) as client:
            assert client.get("/metrics").status_code == 404
            assert client.get("/healthz").status_code == 200
    finally:
        engine.dispose()


def test_heat_maps_only_from_the_model_that_made_the_result(web: Web, tmp_path: Path) -> None:
    from node.http.saliency import HeatMaps
    from storage.registry import ModelRegistry

    ref = web.studies["sdh"]
    base = f"/api/studies/{ref.study_uid}/series/{ref.series_uid}/slices"
    reader = web.auth("reader")
    assert web.client.get(f"{base}/2/heatmap.png", headers=reader).status_code == 503  # none
    heat_maps = HeatMaps(ModelRegistry(web.engine, tmp_path / "models"))
    ctx = WebContext(web.engine, web.files, heat_maps=heat_maps)
    with TestClient(create_app(ctx), base_url=ORIGIN) as client:
        r = client.get(f"{base}/2/heatmap.png", params={"label": "subdural"}, headers=reader)
        # made by no registered model: nothing may explain it
        assert r.status_code == 409 and "v1test" in r.json()["detail"]
        for path, code in ((f"{base}/4/heatmap.png", 404), (f"{base}/0/heatmap.png?label=x", 422),
                           (f"/api/studies/{web.studies['waiting'].study_uid}/series/"
                            f"{web.studies['waiting'].series_uid}/slices/0/heatmap.png", 404)):
            assert client.get(path, headers=reader).status_code == code, path
        assert client.get(f"{base}/2/heatmap.png").status_code == 401


def test_qido_rs_study_search(web: Web) -> None:
    def search(**params: object) -> tuple[int, list[pydicom.Dataset]]:
        r = web.client.get("/dicom-web/studies", params=params, headers=web.auth("reader"))
        if r.status_code != 200:
            return r.status_code, []
        assert r.headers["content-type"] == "application/dicom+json"
        assert "SECRET" not in r.text and "PID-" not in r.text
        return 200, [pydicom.Dataset.from_json(item) for item in r.json()]

    s = web.studies
    code, found = search()
    assert code == 200 and len(found) == 5
    sdh = next(d for d in found if d.StudyInstanceUID == s["sdh"].study_uid)
    assert (sdh.StudyDate, sdh.AccessionNumber, sdh.ModalitiesInStudy) == ("20261125", "ACC2",
                                                                          "CT")
    assert (sdh.NumberOfStudyRelatedSeries, sdh.NumberOfStudyRelatedInstances) == (1, 4)
    assert "PatientName" not in sdh and "PatientID" not in sdh

    def uids(**params: object) -> set[str]:
        code, found = search(**params)
        assert code in (200, 204), params
        return {d.StudyInstanceUID for d in found}

    assert uids(StudyDate="20261125") == {s["sdh"].study_uid}
    assert len(uids(StudyDate="20261126-")) == 4 and uids(StudyDate="-20261125") == {
        s["sdh"].study_uid}
    assert uids(AccessionNumber="ACC2") == {s["sdh"].study_uid}
    assert len(uids(AccessionNumber="AC?*")) == 5 and uids(AccessionNumber="ACC%") == set()
    assert uids(StudyInstanceUID=f"{s['sdh'].study_uid},{s['iph'].study_uid}") == {
        s["sdh"].study_uid, s["iph"].study_uid}
    assert len(uids(ModalitiesInStudy="CT")) == 5
    assert search(ModalitiesInStudy="MR")[0] == 204
    assert len(uids(limit=2, offset=4)) == 1
    for bad in ({"PatientName": "SECRET*"}, {"PatientID": "PID-1"}, {"StudyDate": "2026"},
                {"StudyDate": "20261125-20261126-"}, {"limit": 0}, {"offset": -1},
                {"StudyInstanceUID": "1.2.x"}, {"fuzzymatching": "true"}):
        assert search(**bad)[0] == 400, bad
    assert web.client.get("/dicom-web/studies").status_code == 401


def test_pages_escape_what_came_in_a_dicom_header(web: Web) -> None:
    ref = web.studies["sdh"]
    with web.engine.begin() as conn:
        conn.execute(text("UPDATE study SET study_description = :d WHERE study_uid = :u"),
                     {"d": "<script>alert(1)</script>", "u": ref.study_uid})
    _login(web, "reader")
    page = web.client.get(f"/studies/{ref.study_uid}")
    assert page.status_code == 200
    assert "<script>alert(1)" not in page.text and "&lt;script&gt;alert(1)" in page.text
    listed = web.client.get("/api/worklist").json()["items"]  # the session works on the API
    assert "<script>alert(1)</script>" in [i["StudyDescription"] for i in listed]

"""The API's answers at the edges of its input: integers past what SQL holds, forged
cursors, loose JSON types, malformed dates and long values; each gets its documented 4xx,
never a 500, and the node keeps serving. And what the OpenAPI schema and the JSON promise:
security schemes, typed queue answers, one form of timestamp."""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, func, select

from node.http.access_log import redact
from node.http.app import create_app
from node.http.bounds import INT32_MAX, INT64_MAX
from node.http.context import WebContext
from storage.db import make_engine, upgrade
from storage.files import FileStore
from storage.models import Feedback, TriageResult
from storage.tokens import TokenStore
from tests.webdata import StudyRef, add_study, hours_ago

ORIGIN = "http://testserver"
HUGE = 99999999999999999999


@dataclass
class Api:
    client: TestClient
    engine: Engine
    tokens: dict[str, str]
    study: StudyRef

    def auth(self, role: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[role]}"}


@pytest.fixture
def api(tmp_path: Path) -> Iterator[Api]:
    url = f"sqlite:///{tmp_path / 'index.db'}"
    upgrade(url)
    yield from _api(url, tmp_path)


@pytest.fixture
def api_both(db_url: str, tmp_path: Path) -> Iterator[Api]:
    """As `api`, on SQLite and on the suite's PostgreSQL (conftest `db_url`)."""
    yield from _api(db_url, tmp_path)


def _api(url: str, tmp_path: Path) -> Iterator[Api]:
    engine = make_engine(url)
    files = FileStore(tmp_path / "data")
    study = add_study(engine, files, 1, p_any=0.81, findings=("subdural",),
                      arrived=hours_ago(2))
    add_study(engine, files, 2, p_any=0.05, arrived=hours_ago(1))
    add_study(engine, files, 3, arrived=hours_ago(0.5))  # still receiving
    store = TokenStore(engine)
    tokens = {role: store.create(name=f"{role}-1", role=role)[1]
              for role in ("reader", "radiologist", "admin")}
    with TestClient(create_app(WebContext(engine, files)), base_url=ORIGIN) as client:
        yield Api(client, engine, tokens, study)
    engine.dispose()


def _cursor(values: list[Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(values).encode()).decode().rstrip("=")


def test_integers_past_what_sql_holds_get_a_4xx_on_every_route(api_both: Api) -> None:
    api = api_both
    c, uid = api.client, api.study.study_uid
    gets = [
        ("/dicom-web/studies", {"offset": str(HUGE)}, "reader", 400),
        ("/dicom-web/studies", {"offset": str(INT64_MAX + 1)}, "reader", 400),
        ("/api/worklist", {"cursor": _cursor(["priority", 0, -0.5,
                                              "2026-12-01T01:00:26+00:00", HUGE * 1000])},
         "reader", 400),
        ("/api/worklist", {"cursor": _cursor(["priority", HUGE, -0.5,
                                              "2026-12-01T01:00:26+00:00", 1])}, "reader", 400),
        ("/api/worklist", {"sort": "arrival",
                           "cursor": _cursor(["arrival", "2026-12-01T01:00:26+00:00", HUGE])},
         "reader", 400),
        (f"/api/studies/{uid}/series/{api.study.series_uid}/slices/{HUGE}.png", {}, "reader",
         422),
        ("/api/feedback/agreement", {"days": str(HUGE)}, "reader", 422),
        ("/api/worklist", {"limit": str(HUGE)}, "reader", 422),
    ]
    for url, params, role, expected in gets:
        r = c.get(url, params=params, headers=api.auth(role))
        assert r.status_code == expected, (url, params, r.text)
    r = c.post(f"/api/studies/{uid}/feedback", headers=api.auth("radiologist"),
               json={"result_id": HUGE, "labels": {"any": True}})
    assert r.status_code == 422, r.text
    r = c.post(f"/api/queue/deliveries/{HUGE}/retry", headers=api.auth("admin"))
    assert r.status_code == 422, r.text
    for too_big in (INT64_MAX, INT32_MAX + 1):  # an id column holds 32 bits on PostgreSQL
        r = c.post(f"/api/queue/deliveries/{too_big}/retry", headers=api.auth("admin"))
        assert r.status_code == 422, r.text
        r = c.post(f"/api/studies/{uid}/feedback", headers=api.auth("radiologist"),
                   json={"result_id": too_big, "labels": {"any": True}})
        assert r.status_code == 422, r.text
        r = c.get("/api/worklist", headers=api.auth("reader"), params={
            "sort": "arrival", "cursor": _cursor(["arrival", "2026-12-01T01:00:26+00:00",
                                                  too_big])})
        assert r.status_code == 400, r.text
    r = c.post(f"/api/queue/deliveries/{INT32_MAX}/retry", headers=api.auth("admin"))
    assert r.status_code == 404, r.text  # the largest id that fits is looked up
    r = c.post(f"/api/studies/{uid}/feedback", headers=api.auth("radiologist"),
               json={"result_id": INT32_MAX, "labels": {"any": True}})
    assert r.status_code == 422 and "not a result of this study" in r.text
    r = c.get("/dicom-web/studies", params={"offset": str(INT64_MAX)}, headers=api.auth("reader"))
    assert r.status_code == 204
    with api.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(Feedback)).scalar_one() == 0
    assert c.get("/api/worklist", headers=api.auth("reader")).status_code == 200


def test_every_integer_in_the_schema_is_bounded_to_64_bits(api: Api) -> None:
    """The kind, not the cases: each integer parameter and body field the OpenAPI schema
    declares has a maximum SQL can hold."""
    schema = api.client.get("/openapi.json").json()
    found = []
    for path, methods in schema["paths"].items():
        for method, op in methods.items():
            for p in op.get("parameters", []):
                if _is_int(p["schema"]):
                    found.append((f"{method} {path} {p['name']}", _max(p["schema"])))
    for name, model in schema["components"]["schemas"].items():
        if name.endswith("In"):
            for field, s in model.get("properties", {}).items():
                if _is_int(s):
                    found.append((f"{name}.{field}", _max(s)))
    assert any("delivery_id" in f for f, _ in found) and any("result_id" in f for f, _ in found)
    # the schema writes a bound as a JSON number: 2^63-1 may come back as 9.223372036854776e18
    unbounded = [f for f, m in found if m is None or m > float(INT64_MAX)]
    assert unbounded == []


def _is_int(s: dict[str, Any]) -> bool:
    return s.get("type") == "integer" or any(a.get("type") == "integer"
                                             for a in s.get("anyOf", []))


def _max(s: dict[str, Any]) -> float | None:
    if "maximum" in s:
        return float(s["maximum"])
    return next((float(a["maximum"]) for a in s.get("anyOf", []) if "maximum" in a), None)


def test_access_log_paths_keep_query_keys_not_values() -> None:
    assert redact("/dicom-web/studies?PatientName=PHANTOM%5E9833&limit=5") == \
        "/dicom-web/studies?PatientName=-&limit=-"
    assert redact("/api/worklist") == "/api/worklist"
    assert redact("/x?PHANTOM%5E9833=1&a") == "/x??=-&a=-"  # a key that is not a name
    assert "PHANTOM" not in redact("/x?PHANTOM%5E9833=1") and "9833" not in redact("/x?a=9833")


def test_the_schema_declares_the_token_and_the_session(api: Api) -> None:
    schema = api.client.get("/openapi.json").json()
    schemes = schema["components"]["securitySchemes"]
    assert schemes["bearer"] | {"description": ""} == {
        "type": "http", "scheme": "bearer", "bearerFormat": "icht_...", "description": ""}
    assert (schemes["session"]["type"], schemes["session"]["in"],
            schemes["session"]["name"]) == ("apiKey", "cookie", "ichtriage_session")
    for path, methods in schema["paths"].items():
        for method, op in methods.items():
            names = {name for requirement in op.get("security", []) for name in requirement}
            if path in ("/healthz", "/metrics"):
                assert names == set(), path
            else:
                assert names == {"bearer", "session"}, (method, path)


def test_the_queue_answers_are_typed(api: Api) -> None:
    schema = api.client.get("/openapi.json").json()

    def answer(path: str, method: str) -> str:
        ok = schema["paths"][path][method]["responses"]["200"]["content"]["application/json"]
        return str(ok["schema"]["$ref"]).rsplit("/", 1)[-1]

    assert answer("/api/queue", "get") == "QueueOut"
    queue = schema["components"]["schemas"]["QueueOut"]["properties"]
    assert set(queue) == {"jobs", "deliveries", "receiving"}
    assert queue["receiving"]["items"]["$ref"].endswith("/ReceivingOut")
    for path in ("/api/queue/series/{series_uid}/retry", "/api/queue/series/{series_uid}/complete",
                 "/api/queue/deliveries/{delivery_id}/retry"):
        assert answer(path, "post") == "Outcome"
    r = api.client.get("/api/queue", headers=api.auth("admin"))
    assert r.status_code == 200 and len(r.json()["receiving"]) == 1


ISO = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


def _times(value: Any, key: str = "") -> list[str]:
    if isinstance(value, dict):
        return [t for k, v in value.items() for t in _times(v, k)]
    if isinstance(value, list):
        return [t for v in value for t in _times(v, key)]
    return [value] if key.endswith("_at") and isinstance(value, str) and value else []


def test_every_timestamp_has_one_form(api: Api) -> None:
    c, reader = api.client, api.auth("reader")
    r = c.post(f"/api/studies/{api.study.study_uid}/feedback", headers=api.auth("radiologist"),
               json={"labels": {"subdural": True}})
    assert r.status_code == 201
    answers = [c.get("/api/worklist", headers=reader).json(),
               c.get(f"/api/studies/{api.study.study_uid}", headers=reader).json(),
               c.get("/api/queue", headers=api.auth("admin")).json(), r.json()]
    times = [t for a in answers for t in _times(a)]
    keys = json.dumps(answers)
    for key in ("last_slice_at", "result_at", "first_received_at", "last_received_at",
                "created_at"):
        assert f'"{key}"' in keys, key
    assert len(times) >= 8 and [t for t in times if not ISO.fullmatch(t)] == []


def test_loose_values_malformed_dates_and_long_inputs(api: Api) -> None:
    c, reader, uid = api.client, api.auth("reader"), api.study.study_uid
    for loose in ("yes", 1, "true", None):
        r = c.post(f"/api/studies/{uid}/feedback", headers=api.auth("radiologist"),
                   json={"labels": {"subdural": loose}})
        assert r.status_code == 422, (loose, r.text)
    with api.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(Feedback)).scalar_one() == 0
    for date in ("20231301", "20230230", "00000000"):
        for key in ("study_date_from", "study_date_to"):
            r = c.get("/api/worklist", params={key: date}, headers=reader)
            assert r.status_code == 422, (key, date, r.text)
        for value in (date, f"{date}-", f"-{date}", f"20230101-{date}"):
            r = c.get("/dicom-web/studies", params={"StudyDate": value}, headers=reader)
            assert r.status_code == 400, (value, r.text)
    assert c.get("/api/worklist", params={"study_date_from": "20240229"},
                 headers=reader).status_code == 200
    assert c.get("/dicom-web/studies", params={"StudyDate": "20240229-"},
                 headers=reader).status_code in (200, 204)
    long = "x" * 60_000  # (the test client refuses a URL over 64 KiB)
    r = c.get("/api/worklist", params={"status": long}, headers=reader)
    assert r.status_code == 422 and len(r.content) < 1000
    assert r.json()["detail"][0]["input"].startswith("x" * 64 + "... (60000 characters)")
    r = c.post(f"/api/studies/{uid}/feedback", headers=api.auth("radiologist"),
               json={"labels": {f"l{i}": "z" * 200 for i in range(100)}})
    assert r.status_code == 422 and len(r.content) < 3000
    assert r.json()["detail"][-1]["msg"] == "90 more errors not shown"


def test_qido_answers_406_for_what_it_cannot_give(api: Api) -> None:
    c, reader = api.client, api.auth("reader")
    for accept in ("application/dicom+xml", "multipart/related; type=application/dicom+xml",
                   "text/html"):
        r = c.get("/dicom-web/studies", headers=reader | {"Accept": accept})
        assert r.status_code == 406, accept
    for accept in ("application/dicom+json", "application/json", "*/*",
                   "application/dicom+xml, application/dicom+json;q=0.5", ""):
        r = c.get("/dicom-web/studies", headers=reader | {"Accept": accept})
        assert r.status_code == 200, accept
        assert r.headers["content-type"] == "application/dicom+json"


def test_the_curve_names_its_axes(api: Api) -> None:
    c = api.client
    assert c.post("/login", data={"token": api.tokens["reader"]},
                  headers={"Origin": ORIGIN}).status_code == 200
    page = c.get(f"/studies/{api.study.study_uid}").text
    svg = re.search(r'<svg class="curve".*?</svg>', page, re.S)
    assert svg is not None
    texts = re.findall(r"<text [^>]*>([^<]+)</text>", svg.group(0))
    assert {"probability", "slice (in the order the model read the volume)"} <= set(texts)
    assert {"0", "0.5", "1"} <= set(texts)  # y ticks; x ticks: first, middle, last slice
    slices = len(c.get(f"/api/studies/{api.study.study_uid}", headers=api.auth("reader")
                       ).json()["series"][0]["result"]["curve"])
    assert "1" in texts and str(slices) in texts


def test_a_token_or_a_query_value_sql_cannot_hold_is_refused(api_both: Api) -> None:
    """A well-formed token whose id is past an id column (10 digits) is no valid token (401,
    a log-in page's 401); a NUL in a QIDO value (PostgreSQL text cannot hold one) is 400."""
    api, c = api_both, api_both.client
    forged = f"icht_9999999999_{'A' * 43}"
    r = c.get("/api/worklist", headers={"Authorization": f"Bearer {forged}"})
    assert r.status_code == 401, r.text
    r = c.post("/login", data={"token": forged}, headers={"Origin": ORIGIN})
    assert r.status_code == 401
    for key in ("AccessionNumber", "ModalitiesInStudy", "StudyInstanceUID"):
        r = c.get("/dicom-web/studies", params={key: "A\x00B"}, headers=api.auth("reader"))
        assert r.status_code == 400, (key, r.text)
    assert c.get("/api/worklist", headers=api.auth("reader")).status_code == 200


def test_the_feedback_form_says_in_words_what_it_did(api: Api) -> None:
    """A reading on a result that is no longer the study's (the page was stale) and an empty
    form come back to the study page with a notice, never as the API's JSON."""
    c, uid = api.client, api.study.study_uid
    c.post("/login", data={"token": api.tokens["radiologist"]}, headers={"Origin": ORIGIN})
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', c.get(f"/studies/{uid}").text)
    assert csrf is not None
    with api.engine.connect() as conn:
        other = conn.execute(select(TriageResult.id).where(
            TriageResult.id != api.study.result_pk)).scalars().first()
    assert other is not None
    form = {"csrf_token": csrf.group(1), "label_subdural": "present"}
    cases = [(form | {"result_id": str(other)}, "a newer result"),
             ({"csrf_token": csrf.group(1)}, "say present or absent"),
             (form | {"result_id": str(api.study.result_pk)}, "Your reading is saved.")]
    for data, words in cases:
        r = c.post(f"/studies/{uid}/feedback", data=data, headers={"Origin": ORIGIN},
                   follow_redirects=False)
        assert r.status_code == 303 and "?notice=" in r.headers["location"], r.text
        page = c.get(r.headers["location"])
        assert page.status_code == 200 and "text/html" in page.headers["content-type"]
        notice = re.search(r'<p class="notice" id="notice" role="status">([^<]+)</p>',
                           page.text)
        assert notice is not None and words in notice.group(1)
    with api.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(Feedback)).scalar_one() == 1

"""Worklist pages in SQL agree with storage.worklist's order, on SQLite and PostgreSQL (the
JSON of results is read by each database's own functions); tokens and feedback storage."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import Engine

from storage.feedback import FeedbackStore, ResultMismatchError, UnknownStudyError
from storage.files import FileStore
from storage.tokens import Role, TokenStore, parse
from storage.worklist import worklist
from storage.worklist_pages import CursorError, Filters, page
from tests.webdata import add_study, hours_ago


def _all(engine: Engine, **kwargs: object) -> list[str]:
    uids, cursor = [], None
    while True:
        p = page(engine, limit=3, cursor=cursor, **kwargs)  # type: ignore[arg-type]
        uids += [e.study_uid for e in p.entries]
        cursor = p.next_cursor
        if cursor is None:
            return uids


def test_pages_follow_the_worklist_order(engine: Engine, tmp_path: Path) -> None:
    files = FileStore(tmp_path)
    # two positives of equal probability: the older first, then by arrival
    add_study(engine, files, 1, p_any=0.9, findings=("subdural",), arrived=hours_ago(1))
    add_study(engine, files, 2, p_any=0.9, findings=("epidural",), arrived=hours_ago(2))
    add_study(engine, files, 3, p_any=0.99, findings=("subarachnoid",), arrived=hours_ago(0.5))
    add_study(engine, files, 4, p_any=0.3, complete=False, arrived=hours_ago(3))
    for n in range(5, 12):
        add_study(engine, files, n, p_any=0.01 * n, arrived=hours_ago(n), slices=1)
    add_study(engine, files, 12, arrived=hours_ago(0.1), slices=1)
    expected = [e.study_uid for e in worklist(engine)]
    assert _all(engine) == expected
    assert expected[:4] == ["1.2.826.0.1.3", "1.2.826.0.1.2", "1.2.826.0.1.1", "1.2.826.0.1.4"]
    newest_first = _all(engine, sort="arrival")
    assert newest_first[0] == "1.2.826.0.1.12" and newest_first[-1] == "1.2.826.0.1.11"
    assert sorted(newest_first) == sorted(expected)
    assert _all(engine, filters=Filters(finding="epidural")) == ["1.2.826.0.1.2"]
    assert _all(engine, filters=Filters(priority="high")) == expected[:3]
    assert _all(engine, filters=Filters(status="receiving")) == ["1.2.826.0.1.12"]
    first = page(engine, limit=3)
    with pytest.raises(CursorError):
        page(engine, sort="arrival", cursor=first.next_cursor)


def test_tokens_are_kept_hashed_and_checked(engine: Engine) -> None:
    store = TokenStore(engine)
    info, token = store.create(name="night reader", role="reader")
    parsed = parse(token)
    assert parsed is not None and parsed[0] == info.pk
    with engine.connect() as conn:
        row = conn.exec_driver_sql("SELECT salt, secret_hash FROM api_token").one()
    assert parsed[1] not in row[0] + row[1] and len(row[1]) == 64
    assert store.verify(token) == info and info.role is Role.READER
    assert store.verify(token[:-1] + ("A" if token[-1] != "A" else "B")) is None
    assert store.verify(f"icht_{info.pk + 1}_{parsed[1]}") is None
    assert store.revoke(info.pk) and not store.revoke(info.pk)
    assert store.verify(token) is None
    with pytest.raises(ValueError):
        store.create(name="x", role="superuser")
    assert Role.ADMIN.allows(Role.RADIOLOGIST) and not Role.READER.allows(Role.RADIOLOGIST)


def test_feedback_judges_the_result_it_names(engine: Engine, tmp_path: Path) -> None:
    files = FileStore(tmp_path)
    ref = add_study(engine, files, 1, p_any=0.9, findings=("subdural",), slices=1)
    other = add_study(engine, files, 2, p_any=0.1, slices=1)
    store = FeedbackStore(engine)
    store.add(ref.study_uid, {"subdural": True, "any": False}, author="a", token_pk=None,
              result_pk=ref.result_pk)
    store.add(ref.study_uid, {"subdural": False}, author="b", token_pk=None,
              result_pk=ref.result_pk)  # the newest word counts
    store.add(other.study_uid, {"subdural": False}, author="a", token_pk=None, result_pk=None)
    agreement = {a.label: (a.confirmed, a.corrected) for a in store.agreement()}
    assert agreement == {"any": (0, 1), "subdural": (0, 1)}
    assert store.newest_labels()[ref.study_uid] == {"subdural": False, "any": False}
    assert [f.verdict for f in store.for_study(other.study_uid)] == ["label"]
    with pytest.raises(UnknownStudyError):
        store.add("1.2.3", {"any": True}, author="a", token_pk=None, result_pk=None)
    with pytest.raises(ResultMismatchError):
        store.add(other.study_uid, {"any": True}, author="a", token_pk=None,
                  result_pk=ref.result_pk)
    assert len(store.for_study(ref.study_uid)) == 3
    by_day = store.agreement_by_day(hours_ago(1))
    assert {(label, confirmed, corrected) for _, label, confirmed, corrected in by_day} == {
        ("any", 0, 1), ("subdural", 1, 1)}
    assert store.agreement_by_day(hours_ago(-1)) == []


def test_study_search_matches_alike_on_both_databases(engine: Engine, tmp_path: Path) -> None:
    from storage.study_search import StudyQuery, search_studies

    files = FileStore(tmp_path)
    add_study(engine, files, 1, slices=2, study_date="20261101")
    add_study(engine, files, 2, slices=3, study_date="20261102")
    found = search_studies(engine, StudyQuery(accession="ACC?"))
    assert [(m.study_uid, m.series, m.instances, m.modalities) for m in found] == [
        ("1.2.826.0.1.1", 1, 2, ("CT",)), ("1.2.826.0.1.2", 1, 3, ("CT",))]
    assert search_studies(engine, StudyQuery(accession="ACC_")) == []  # `_` is literal
    assert [m.study_uid for m in search_studies(engine, StudyQuery(date_from="20261102"))] == [
        "1.2.826.0.1.2"]
    assert [m.study_uid for m in search_studies(engine, StudyQuery(limit=1, offset=1))] == [
        "1.2.826.0.1.2"]


def test_counts_and_study_detail_read_alike_on_both_databases(engine: Engine,
                                                              tmp_path: Path) -> None:
    from ml.labels import LABELS
    from storage.counts import count
    from storage.studies import StudyReader

    files = FileStore(tmp_path)
    ref = add_study(engine, files, 1, p_any=0.9, findings=("subdural",), slices=3)
    add_study(engine, files, 2, p_any=0.1, slices=2)
    add_study(engine, files, 3, slices=1)
    c = count(engine, LABELS)
    assert (c.instances, c.results, c.queue_depth) == (6, 2, 0)
    assert c.positives == dict.fromkeys(LABELS, 0) | {"any": 1, "subdural": 1}
    assert c.series == {"done": 2, "receiving": 1} and c.latency.count == 2
    assert (c.inference.count, dict(c.inference.buckets)[0.05]) == (2, 2)  # 0.04 s each
    detail = StudyReader(engine).detail(ref.study_uid)
    assert detail is not None and detail.accession_number == "ACC1"
    (series,) = detail.series
    assert series.result is not None and series.result.calls["subdural"] is True
    assert [p.position for p in series.result.curve] == [0, 1, 2]
    found = StudyReader(engine).slice_file(ref.study_uid, ref.series_uid, 2)
    assert found is not None and found.count == 3 and files.path_of(found.file_path).is_file()
    assert StudyReader(engine).slice_file(ref.study_uid, ref.series_uid, 3) is None
    volume = StudyReader(engine).result_volume(ref.study_uid, ref.series_uid)
    assert volume is not None and len(volume.slices) == 3 and volume.model_version == "v1test"

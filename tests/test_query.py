"""C-FIND matching over the index (storage.query), on SQLite and PostgreSQL alike."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy import Engine, insert, select

from storage.files import FileStore
from storage.instances import InstanceMeta, InstanceStore
from storage.matching import IdentifierError, MatchingValueError, wildcard_pattern
from storage.models import Patient, Series, TriageResult
from storage.query import Query, count_instances, find, instances, presentations
from storage.query_keys import InformationModel

CT = "1.2.840.10008.5.1.4.1.1.2"
SR = "1.2.840.10008.5.1.4.1.1.88.22"
EXPLICIT = "1.2.840.10008.1.2.1"
STUDY_ROOT, PATIENT_ROOT = InformationModel.STUDY_ROOT, InformationModel.PATIENT_ROOT

# (study uid, patient id, patient name, date, time, accession, description)
STUDIES = [
    ("1.2.3.1", "P1", "Chen^Wei", "20260105", "081500", "A1", "CT HEAD"),
    ("1.2.3.2", "P2", "chen^li", "20260120", "143000", "A2", "CT HEAD 100%_X"),
    ("1.2.3.3", "P3", "Müller^Jörg", "20260203", "235959", "A3", "CT HEAD WO"),
    ("1.2.3.4", "P4", "O'Brien^Pat", "20251231", "000000", "A4", "MR BRAIN"),
]


def _index(engine: Engine, tmp_path: Path) -> InstanceStore:
    store = InstanceStore(engine, FileStore(tmp_path / "data"))
    for n, (study, pid, name, date, time, acc, desc) in enumerate(STUDIES):
        modality = "MR" if desc.startswith("MR") else "CT"
        for i in range(n + 1):
            store.store(InstanceMeta(
                sop_class_uid=CT, sop_uid=f"{study}.1.{i + 1}", study_uid=study,
                series_uid=f"{study}.1", transfer_syntax_uid=EXPLICIT, patient_id=pid,
                patient_name=name, study_date=date, study_time=time, accession_number=acc,
                study_description=desc, modality=modality, series_number=1,
                instance_number=i + 1), [b"x"])
    # a report in the first study
    store.store(InstanceMeta(sop_class_uid=SR, sop_uid="1.2.3.1.9.1", study_uid="1.2.3.1",
                             series_uid="1.2.3.1.9", transfer_syntax_uid=EXPLICIT,
                             patient_id="P1", patient_name="Chen^Wei", modality="SR",
                             series_number=99, instance_number=1), [b"x"])
    return store


@pytest.fixture
def indexed(engine: Engine, tmp_path: Path) -> Engine:
    _index(engine, tmp_path)
    return engine


def _study_uids(engine: Engine, **keys: str) -> list[str]:
    query = Query.build(STUDY_ROOT, "STUDY", {"StudyInstanceUID": [],
                                              **{k: v.split("\\") if v else []
                                                 for k, v in keys.items()}})
    return [row["StudyInstanceUID"] for row in find(engine, query)]


def test_universal_and_single_value_matching(indexed: Engine) -> None:
    assert sorted(_study_uids(indexed)) == ["1.2.3.1", "1.2.3.2", "1.2.3.3", "1.2.3.4"]
    assert sorted(_study_uids(indexed, PatientName="*")) == sorted(_study_uids(indexed))
    assert _study_uids(indexed, PatientID="P2") == ["1.2.3.2"]
    assert _study_uids(indexed, AccessionNumber="a2") == []  # SH is case-sensitive


def test_person_names_match_without_regard_to_case_on_both_databases(indexed: Engine) -> None:
    assert sorted(_study_uids(indexed, PatientName="CHEN*")) == ["1.2.3.1", "1.2.3.2"]
    assert sorted(_study_uids(indexed, PatientName="chen^wei")) == ["1.2.3.1"]
    assert _study_uids(indexed, PatientName="müller*") == ["1.2.3.3"]  # not only ASCII
    assert _study_uids(indexed, PatientName="?hen^l?") == ["1.2.3.2"]
    with indexed.connect() as conn:
        stored = conn.execute(select(Patient.patient_name_match)
                              .where(Patient.patient_id == "P3")).scalar_one()
    assert stored == "MÜLLER^JÖRG"


def test_wildcards_match_only_what_they_mean(indexed: Engine) -> None:
    # SQL LIKE's own wildcards and GLOB's brackets are literal characters to C-FIND
    assert _study_uids(indexed, StudyDescription="*100%_X") == ["1.2.3.2"]
    assert _study_uids(indexed, StudyDescription="CT HEAD%") == []
    assert _study_uids(indexed, StudyDescription="CT_HEAD") == []
    assert _study_uids(indexed, StudyDescription="[CM]*") == []
    assert sorted(_study_uids(indexed, StudyDescription="CT HEAD*")) == [
        "1.2.3.1", "1.2.3.2", "1.2.3.3"]
    assert wildcard_pattern("a%b_c*d?", "postgresql") == "a\\%b\\_c%d_"
    assert wildcard_pattern("[x]*", "sqlite") == "[[]x]*"


def test_sql_fragments_in_values_are_only_values(indexed: Engine) -> None:
    for value in ("' OR '1'='1", "x'; DROP TABLE patient; --", "\" OR 1=1 --", "*' OR 1=1--"):
        assert _study_uids(indexed, PatientName=value) == []
        assert _study_uids(indexed, PatientID=value) == []
    assert _study_uids(indexed, PatientName="O'Brien*") == ["1.2.3.4"]
    assert len(_study_uids(indexed)) == 4  # the tables are all there


def test_date_and_time_ranges(indexed: Engine) -> None:
    assert sorted(_study_uids(indexed, StudyDate="20260101-20260131")) == ["1.2.3.1", "1.2.3.2"]
    assert _study_uids(indexed, StudyDate="-20251231") == ["1.2.3.4"]
    assert _study_uids(indexed, StudyDate="20260201-") == ["1.2.3.3"]
    assert _study_uids(indexed, StudyDate="20260120") == ["1.2.3.2"]
    assert sorted(_study_uids(indexed, StudyTime="14-23")) == ["1.2.3.2", "1.2.3.3"]
    assert _study_uids(indexed, StudyTime="0815") == ["1.2.3.1"]  # all of that minute
    with pytest.raises(MatchingValueError, match="StudyDate"):
        _study_uids(indexed, StudyDate="2026-01-01")


def test_uid_lists_and_no_wildcards_in_uids(indexed: Engine) -> None:
    assert sorted(_study_uids(indexed, StudyInstanceUID="1.2.3.1\\1.2.3.3")) == [
        "1.2.3.1", "1.2.3.3"]
    with pytest.raises(MatchingValueError, match="wildcard"):
        _study_uids(indexed, StudyInstanceUID="1.2.3.*")


def test_study_level_return_keys_come_from_the_index(indexed: Engine) -> None:
    query = Query.build(STUDY_ROOT, "STUDY", {
        "StudyInstanceUID": ["1.2.3.1"], "ModalitiesInStudy": [], "SOPClassesInStudy": [],
        "NumberOfStudyRelatedSeries": [], "NumberOfStudyRelatedInstances": [],
        "PatientName": [], "OtherPatientIDs": []})
    [row] = list(find(indexed, query))
    assert row == {"StudyInstanceUID": "1.2.3.1", "ModalitiesInStudy": ["CT", "SR"],
                   "SOPClassesInStudy": [CT, SR], "NumberOfStudyRelatedSeries": 2,
                   "NumberOfStudyRelatedInstances": 2, "PatientName": "Chen^Wei"}
    assert _study_uids(indexed, ModalitiesInStudy="MR") == ["1.2.3.4"]


def test_every_level_of_both_models(indexed: Engine) -> None:
    patients = list(find(indexed, Query.build(PATIENT_ROOT, "PATIENT", {
        "PatientID": [], "NumberOfPatientRelatedStudies": [],
        "NumberOfPatientRelatedInstances": []})))
    assert {p["PatientID"]: p["NumberOfPatientRelatedInstances"] for p in patients} == {
        "P1": 2, "P2": 2, "P3": 3, "P4": 4}
    series = list(find(indexed, Query.build(PATIENT_ROOT, "SERIES", {
        "PatientID": ["P1"], "StudyInstanceUID": ["1.2.3.1"], "SeriesInstanceUID": [],
        "Modality": [], "NumberOfSeriesRelatedInstances": []})))
    assert [(s["Modality"], s["NumberOfSeriesRelatedInstances"]) for s in series] == [
        ("CT", 1), ("SR", 1)]
    images = list(find(indexed, Query.build(STUDY_ROOT, "IMAGE", {
        "SeriesInstanceUID": ["1.2.3.4.1"], "SOPInstanceUID": [], "InstanceNumber": ["2", "3"]})))
    assert [i["SOPInstanceUID"] for i in images] == ["1.2.3.4.1.2", "1.2.3.4.1.3"]


def test_identifiers_that_do_not_fit_the_model_are_refused() -> None:
    with pytest.raises(IdentifierError, match="no PATIENT level"):
        Query.build(STUDY_ROOT, "PATIENT", {"PatientID": []})
    with pytest.raises(IdentifierError, match="unknown"):
        Query.build(STUDY_ROOT, "FRAME", {})
    with pytest.raises(IdentifierError, match="SeriesInstanceUID is a SERIES key"):
        Query.build(STUDY_ROOT, "STUDY", {"SeriesInstanceUID": []})


def test_retrieve_counts_and_lists_every_instance_below(indexed: Engine) -> None:
    query = Query.build(STUDY_ROOT, "STUDY", {"StudyInstanceUID": ["1.2.3.1", "1.2.3.3"]})
    assert count_instances(indexed, query) == 5
    assert sorted(presentations(indexed, query)) == [(CT, EXPLICIT), (SR, EXPLICIT)]
    found = [i.sop_uid for i in instances(indexed, query)]
    assert sorted(found) == ["1.2.3.1.1.1", "1.2.3.1.9.1", "1.2.3.3.1.1", "1.2.3.3.1.2",
                             "1.2.3.3.1.3"]


def _result(engine: Engine, series_uid: str, *, positive: bool, complete: bool = True,
            p: float = 0.5, calls: dict[str, bool] | None = None) -> None:
    with engine.begin() as conn:
        series_pk = conn.execute(select(Series.id).where(Series.series_uid == series_uid)
                                 ).scalar_one()
        conn.execute(insert(TriageResult).values(
            series_pk=series_pk, model_name="m", model_version="1", probabilities="{}",
            calls=json.dumps(calls or {"any": positive}), positive=positive,
            max_probability=p, complete=complete))


def test_study_answers_come_most_urgent_first_with_the_triage(indexed: Engine) -> None:
    _result(indexed, "1.2.3.1.1", positive=False, p=0.1)
    _result(indexed, "1.2.3.2.1", positive=True, p=0.7, calls={"any": True, "subdural": True})
    _result(indexed, "1.2.3.3.1", positive=True, p=0.95,
            calls={"any": True, "epidural": True})
    _result(indexed, "1.2.3.4.1", positive=False, complete=False, p=0.2)
    query = Query.build(STUDY_ROOT, "STUDY", {"StudyInstanceUID": [], "TriagePriority": [],
                                              "TriageProbability": [], "TriageFindings": []})
    rows = list(find(indexed, query))
    assert [(r["StudyInstanceUID"], r["TriagePriority"]) for r in rows] == [
        ("1.2.3.3", "HIGH"), ("1.2.3.2", "HIGH"), ("1.2.3.4", "INCOMPLETE"),
        ("1.2.3.1", "ROUTINE")]
    assert rows[0]["TriageFindings"] == ["EPIDURAL"] and rows[0]["TriageProbability"] == "0.9500"
    # a later negative result on the same series supersedes the positive one
    _result(indexed, "1.2.3.3.1", positive=False, p=0.05)
    assert [r["StudyInstanceUID"] for r in find(indexed, query)][0] == "1.2.3.2"

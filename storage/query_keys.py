"""The keys the index matches and returns, as data: keyword -> level, matching type, column
(PS3.4 C.4.1.1, C.6.1.1, C.6.2.1). Counts, ModalitiesInStudy, SOPClassesInStudy and the
triage are expressions over the level's tables, correlated to the row's study or patient.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from functools import cache
from typing import Any

from sqlalchemy import case, false, func, literal, select, true
from sqlalchemy.orm import aliased
from sqlalchemy.sql.elements import ColumnElement

from storage.matching import Matching
from storage.models import Instance, Patient, Series, Study, TriageResult


class QueryLevel(StrEnum):
    """Query/Retrieve Level (0008,0052) values, top to bottom (PS3.4 C.6.1.1, C.6.2.1)."""

    PATIENT = "PATIENT"
    STUDY = "STUDY"
    SERIES = "SERIES"
    IMAGE = "IMAGE"

    @property
    def depth(self) -> int:
        return list(QueryLevel).index(self)


class InformationModel(StrEnum):
    """The Query/Retrieve information models served (PS3.4 C.6.1 and C.6.2)."""

    PATIENT_ROOT = "PATIENT_ROOT"
    STUDY_ROOT = "STUDY_ROOT"

    @property
    def levels(self) -> tuple[QueryLevel, ...]:
        all_levels = tuple(QueryLevel)
        return all_levels if self is InformationModel.PATIENT_ROOT else all_levels[1:]



Column = Callable[[], Any]  # a column, or an expression of the level's tables


@dataclass(frozen=True)
class Attribute:
    """One key the index matches or returns: its level, matching type and column; `convert`
    turns the column's value into the DICOM value (None: returned as read)."""

    keyword: str
    level: QueryLevel
    matching: Matching
    column: Column
    match_column: Column | None = None  # the column matched, when not `column`
    convert: Callable[[Any], Any] | None = None
    unique: bool = False


def _count(value: Any) -> int:
    return int(value or 0)


def _split(value: Any) -> list[str]:
    return sorted({v for v in (value or "").split(",") if v})


def _positive_labels(calls: Any) -> list[str]:
    """The labels a result calls positive, as CS values ('SUBDURAL'); 'any' is implied."""
    if not calls:
        return []
    return [label.upper() for label, called in json.loads(calls).items()
            if called and label != "any"]


def _probability(value: Any) -> str | None:
    return None if value is None else f"{float(value):.4f}"


def _group_concat(column: Any) -> ColumnElement[Any]:
    """Values joined by ',' (SQLite's group_concat, PostgreSQL's string_agg); `_split` makes
    them distinct (SQLite takes no separator with DISTINCT)."""
    return func.aggregate_strings(column, ",")


def _study_series() -> Any:
    return aliased(Series)


@cache
def _number_of_study_related_series() -> ColumnElement[Any]:
    s = _study_series()
    return select(func.count(s.id)).where(s.study_pk == Study.id).scalar_subquery()


@cache
def _number_of_study_related_instances() -> ColumnElement[Any]:
    s = _study_series()
    return (select(func.coalesce(func.sum(s.instance_count), 0))
            .where(s.study_pk == Study.id).scalar_subquery())


@cache
def _modalities_in_study() -> ColumnElement[Any]:
    s = _study_series()
    return select(_group_concat(s.modality)).where(s.study_pk == Study.id).scalar_subquery()


@cache
def _sop_classes_in_study() -> ColumnElement[Any]:
    s, i = _study_series(), aliased(Instance)
    return (select(_group_concat(i.sop_class_uid)).join(s, s.id == i.series_pk)
            .where(s.study_pk == Study.id).scalar_subquery())


def _number_of_series_related_instances() -> Any:
    return Series.instance_count


def _patient_related(what: str) -> Column:
    @cache
    def column() -> ColumnElement[Any]:
        st, s = aliased(Study), aliased(Series)
        if what == "studies":
            return select(func.count(st.id)).where(st.patient_pk == Patient.id).scalar_subquery()
        query = select(func.count(s.id) if what == "series"
                       else func.coalesce(func.sum(s.instance_count), 0)).select_from(s)
        return query.join(st, st.id == s.study_pk).where(st.patient_pk == Patient.id) \
            .scalar_subquery()
    return column


# Subqueries and expressions are built once (@cache) and shared by every query: SQLAlchemy
# constructs are immutable, and building these (aliases, column adaptation) took 15-35 ms a
# query, where the query itself runs in well under a millisecond for one study.

# The most severe triage result of a study (joined at STUDY level as `SEVERE`): of the latest
# result of each image series, a positive call first, then an incomplete one, then the higher
# probability (as storage.worklist ranks a study's series).
SEVERE = aliased(TriageResult, name="severe")


@cache
def severe_result_pk() -> ColumnElement[Any]:
    result, series, newer = aliased(TriageResult), aliased(Series), aliased(TriageResult)
    latest = select(func.max(newer.id)).where(newer.series_pk == series.id).scalar_subquery()
    return (select(result.id).join(series, series.id == result.series_pk)
            .where(series.study_pk == Study.id, series.modality != "SR", result.id == latest)
            .order_by(result.positive.desc(), result.complete.asc(),
                      result.max_probability.desc())
            .limit(1).scalar_subquery())


@cache
def triage_rank() -> ColumnElement[Any]:
    return case((SEVERE.id.is_(None), 3), (SEVERE.positive.is_(true()), 0),
                (SEVERE.complete.is_(false()), 1), else_=2)


@cache
def _triage_priority() -> ColumnElement[Any]:
    return case((SEVERE.id.is_(None), literal("")), (SEVERE.positive.is_(true()), "HIGH"),
                (SEVERE.complete.is_(false()), "INCOMPLETE"), else_="ROUTINE")


def _a(keyword: str, level: QueryLevel, matching: Matching, column: Column, **kw: Any
       ) -> Attribute:
    return Attribute(keyword, level, matching, column, **kw)


P, ST, SE, IM = QueryLevel.PATIENT, QueryLevel.STUDY, QueryLevel.SERIES, QueryLevel.IMAGE
M = Matching

ATTRIBUTES: dict[str, Attribute] = {a.keyword: a for a in (
    _a("PatientID", P, M.TEXT, lambda: Patient.patient_id, unique=True),
    _a("PatientName", P, M.PERSON_NAME, lambda: Patient.patient_name,
       match_column=lambda: Patient.patient_name_match),
    _a("IssuerOfPatientID", P, M.TEXT, lambda: Patient.issuer_of_patient_id),
    _a("PatientBirthDate", P, M.DATE, lambda: Patient.birth_date),
    _a("PatientSex", P, M.TEXT, lambda: Patient.sex),
    _a("NumberOfPatientRelatedStudies", P, M.RETURN_ONLY, _patient_related("studies"),
       convert=_count),
    _a("NumberOfPatientRelatedSeries", P, M.RETURN_ONLY, _patient_related("series"),
       convert=_count),
    _a("NumberOfPatientRelatedInstances", P, M.RETURN_ONLY, _patient_related("instances"),
       convert=_count),
    _a("StudyInstanceUID", ST, M.UID, lambda: Study.study_uid, unique=True),
    _a("StudyDate", ST, M.DATE, lambda: Study.study_date),
    _a("StudyTime", ST, M.TIME, lambda: Study.study_time),
    _a("AccessionNumber", ST, M.TEXT, lambda: Study.accession_number),
    _a("StudyID", ST, M.TEXT, lambda: Study.study_id),
    _a("StudyDescription", ST, M.TEXT, lambda: Study.study_description),
    _a("ReferringPhysicianName", ST, M.TEXT, lambda: Study.referring_physician),
    _a("ModalitiesInStudy", ST, M.MODALITIES, _modalities_in_study, convert=_split),
    _a("SOPClassesInStudy", ST, M.RETURN_ONLY, _sop_classes_in_study, convert=_split),
    _a("NumberOfStudyRelatedSeries", ST, M.RETURN_ONLY, _number_of_study_related_series,
       convert=_count),
    _a("NumberOfStudyRelatedInstances", ST, M.RETURN_ONLY, _number_of_study_related_instances,
       convert=_count),
    # The node's triage, in its private group at STUDY level (node.dicom.qr_scp.TRIAGE_TAGS)
    _a("TriagePriority", ST, M.RETURN_ONLY, _triage_priority),
    _a("TriageProbability", ST, M.RETURN_ONLY, lambda: SEVERE.max_probability,
       convert=_probability),
    _a("TriageFindings", ST, M.RETURN_ONLY, lambda: SEVERE.calls, convert=_positive_labels),
    _a("SeriesInstanceUID", SE, M.UID, lambda: Series.series_uid, unique=True),
    _a("Modality", SE, M.TEXT, lambda: Series.modality),
    _a("SeriesNumber", SE, M.NUMBER, lambda: Series.series_number),
    _a("SeriesDescription", SE, M.TEXT, lambda: Series.series_description),
    _a("BodyPartExamined", SE, M.TEXT, lambda: Series.body_part),
    _a("NumberOfSeriesRelatedInstances", SE, M.RETURN_ONLY,
       _number_of_series_related_instances, convert=_count),
    _a("SOPInstanceUID", IM, M.UID, lambda: Instance.sop_uid, unique=True),
    _a("SOPClassUID", IM, M.UID, lambda: Instance.sop_class_uid),
    _a("InstanceNumber", IM, M.NUMBER, lambda: Instance.instance_number),
    _a("Rows", IM, M.NUMBER, lambda: Instance.rows),
    _a("Columns", IM, M.NUMBER, lambda: Instance.columns),
    _a("NumberOfFrames", IM, M.NUMBER, lambda: Instance.number_of_frames),
)}

TRIAGE_ORDER = ("STUDY level answers come most urgent first: studies the model calls positive "
                "(highest probability first), then studies whose negative is provisional, then "
                "routine and untriaged studies in the order the node received them")



"""C-FIND matching over the index (PS3.4 C.2.2.2, C.4.1, C.6.1 and C.6.2).

The keys the node matches and returns are the table `ATTRIBUTES` (keyword -> level, matching
type, column); one function per PS3.4 C.2.2.2 matching type turns a key's value into a SQL
condition, parameterized, wildcards escaped. `find` runs one select per query, over the
patient / study / series / instance tables, and yields one row at a time from the database's
cursor (a server-side cursor on PostgreSQL): a 10,000-study answer is never a list in memory.

What the node supports, for its conformance statement:
- Information models: Patient Root (PATIENT, STUDY, SERIES, IMAGE) and Study Root (STUDY,
  SERIES, IMAGE). Hierarchical queries: keys of the query level and of the levels above it are
  matched (a non-unique key above the level is matched too, not refused); a key of a level
  below the query level is refused (`IdentifierError`, 0xA900). Relational queries are not
  supported.
- Matching: universal (empty value or "*"), single value, wildcard ("*", "?": case-sensitive,
  except PatientName, which is matched without regard to case, see storage.person_names),
  UID lists (a wildcard in a UID is refused), DA and TM ranges ("a-b", "-b", "a-"), several
  values of a text key as a list (any may match). Counts, SOPClassesInStudy and the triage keys
  are return keys only: a value given for them is ignored. Sequence matching is not supported.
- Keys not in `ATTRIBUTES` are not matched and are returned empty (PS3.4 C.2.2.1.3).
- Order of responses: STUDY level, most urgent first (see `TRIAGE_ORDER`); other levels by
  their number (SeriesNumber, InstanceNumber) or the order the index learnt of them.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    Engine,
    Select,
    and_,
    case,
    false,
    func,
    literal,
    or_,
    select,
    true,
)
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import aliased
from sqlalchemy.sql.elements import ColumnElement

from storage.db import reader
from storage.errors import DatabaseError, StorageError
from storage.models import Instance, Patient, Series, Study, TriageResult
from storage.person_names import match_key


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


class Matching(StrEnum):
    """How a key's value is matched (PS3.4 C.2.2.2)."""

    TEXT = "text"  # single value, wildcard, a list of values; case-sensitive
    PERSON_NAME = "person_name"  # as TEXT, on the folded name (storage.person_names)
    UID = "uid"  # single value, list of UIDs (C.2.2.2.2); no wildcard
    DATE = "date"  # single value, range (C.2.2.2.5)
    TIME = "time"
    NUMBER = "number"  # IS: single value
    MODALITIES = "modalities"  # ModalitiesInStudy: a series of one of the listed modalities
    RETURN_ONLY = "return_only"  # returned, never matched


class QueryError(StorageError):
    """An identifier the index cannot answer; `keyword` names the key at fault."""

    def __init__(self, message: str, keyword: str = "") -> None:
        super().__init__(message)
        self.keyword = keyword


class IdentifierError(QueryError):
    """The identifier does not fit the information model: no or an unknown level, a key of a
    level below the query level (PS3.4 C.4.1.2.1; answered 0xA900)."""


class MatchingValueError(QueryError):
    """A key's value cannot be matched as its VR says: a wildcard in a UID, a date that is
    not YYYYMMDD, a number that is not one (answered 0xC000, unable to process)."""


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


def _number_of_study_related_series() -> ColumnElement[Any]:
    s = _study_series()
    return select(func.count(s.id)).where(s.study_pk == Study.id).scalar_subquery()


def _number_of_study_related_instances() -> ColumnElement[Any]:
    s = _study_series()
    return (select(func.coalesce(func.sum(s.instance_count), 0))
            .where(s.study_pk == Study.id).scalar_subquery())


def _modalities_in_study() -> ColumnElement[Any]:
    s = _study_series()
    return select(_group_concat(s.modality)).where(s.study_pk == Study.id).scalar_subquery()


def _sop_classes_in_study() -> ColumnElement[Any]:
    s, i = _study_series(), aliased(Instance)
    return (select(_group_concat(i.sop_class_uid)).join(s, s.id == i.series_pk)
            .where(s.study_pk == Study.id).scalar_subquery())


def _number_of_series_related_instances() -> Any:
    return Series.instance_count


def _patient_related(what: str) -> Column:
    def column() -> ColumnElement[Any]:
        st, s = aliased(Study), aliased(Series)
        if what == "studies":
            return select(func.count(st.id)).where(st.patient_pk == Patient.id).scalar_subquery()
        query = select(func.count(s.id) if what == "series"
                       else func.coalesce(func.sum(s.instance_count), 0)).select_from(s)
        return query.join(st, st.id == s.study_pk).where(st.patient_pk == Patient.id) \
            .scalar_subquery()
    return column


# The most severe triage result of a study (joined at STUDY level as `_severe`): of the latest
# result of each image series, a positive call first, then an incomplete one, then the higher
# probability (as storage.worklist ranks a study's series).
_severe = aliased(TriageResult, name="severe")


def _severe_result_pk() -> ColumnElement[Any]:
    result, series, newer = aliased(TriageResult), aliased(Series), aliased(TriageResult)
    latest = select(func.max(newer.id)).where(newer.series_pk == series.id).scalar_subquery()
    return (select(result.id).join(series, series.id == result.series_pk)
            .where(series.study_pk == Study.id, series.modality != "SR", result.id == latest)
            .order_by(result.positive.desc(), result.complete.asc(),
                      result.max_probability.desc())
            .limit(1).scalar_subquery())


def _triage_rank() -> ColumnElement[Any]:
    return case((_severe.id.is_(None), 3), (_severe.positive.is_(true()), 0),
                (_severe.complete.is_(false()), 1), else_=2)


def _triage_priority() -> ColumnElement[Any]:
    return case((_severe.id.is_(None), literal("")), (_severe.positive.is_(true()), "HIGH"),
                (_severe.complete.is_(false()), "INCOMPLETE"), else_="ROUTINE")


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
    _a("TriageProbability", ST, M.RETURN_ONLY, lambda: _severe.max_probability,
       convert=_probability),
    _a("TriageFindings", ST, M.RETURN_ONLY, lambda: _severe.calls, convert=_positive_labels),
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


# -- matching, one function per PS3.4 C.2.2.2 type ------------------------------------------
_DATE = re.compile(r"\d{8}")
_TIME = re.compile(r"\d{2}(\d{2}(\d{2}(\.\d{1,6})?)?)?")


def _has_wildcard(value: str) -> bool:
    return "*" in value or "?" in value


def wildcard_pattern(value: str, dialect: str) -> str:
    """`value`'s C-FIND wildcards ('*' any run, '?' one character; PS3.4 C.2.2.2.4) as a
    pattern for SQLite GLOB (case-sensitive) or PostgreSQL LIKE ... ESCAPE '\\'; every other
    character is matched literally."""
    if dialect == "sqlite":
        return value.replace("[", "[[]")
    escaped = value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped.replace("*", "%").replace("?", "_")


def match_text(column: Any, values: Sequence[str], dialect: str
               ) -> ColumnElement[bool]:
    """Single value or wildcard matching of each of `values`; any may match."""
    conditions = []
    for value in values:
        if not _has_wildcard(value):
            conditions.append(column == value)
        elif dialect == "sqlite":
            conditions.append(column.op("GLOB")(wildcard_pattern(value, dialect)))
        else:
            conditions.append(column.like(wildcard_pattern(value, dialect), escape="\\"))
    return or_(*conditions)


def match_uids(column: Any, values: Sequence[str], keyword: str
               ) -> ColumnElement[bool]:
    """Single value or list of UIDs (PS3.4 C.2.2.2.2). Raises MatchingValueError for a
    wildcard."""
    if any(_has_wildcard(v) for v in values):
        raise MatchingValueError(f"{keyword}: no wildcards in a UID", keyword)
    return column == values[0] if len(values) == 1 else column.in_(values)


def _range(value: str, pattern: re.Pattern[str], keyword: str) -> tuple[str, str]:
    low, dash, high = value.partition("-")
    if not dash:
        high = low
    for bound in (low, high):
        if bound and not pattern.fullmatch(bound):
            raise MatchingValueError(f"{keyword}: {bound!r} is not a valid value or range",
                                     keyword)
    if not low and not high:
        raise MatchingValueError(f"{keyword}: '-' is not a range", keyword)
    return low, high


def match_dates(column: Any, values: Sequence[str], keyword: str
                ) -> ColumnElement[bool]:
    """Single date or date range, YYYYMMDD (PS3.4 C.2.2.2.5); several values: any."""
    conditions = []
    for value in values:
        low, high = _range(value, _DATE, keyword)
        conditions.append(_between(column, low, high))
    return or_(*conditions)


def match_times(column: Any, values: Sequence[str], keyword: str
                ) -> ColumnElement[bool]:
    """Single time or time range, HH[MM[SS[.F]]] (PS3.4 C.2.2.2.5): '10-11' is 10:00:00 to
    11:59:59.999999, the upper bound taking in all of its last unit."""
    conditions = []
    for value in values:
        low, high = _range(value, _TIME, keyword)
        conditions.append(_between(column, low, (high + "999999.999999"[len(high):])
                                   if high else ""))
    return or_(*conditions)


def _between(column: Any, low: str, high: str) -> ColumnElement[bool]:
    parts = [column != ""]
    if low:
        parts.append(column >= low)
    if high:
        parts.append(column <= high)
    return and_(*parts)


def match_numbers(column: Any, values: Sequence[str], keyword: str
                  ) -> ColumnElement[bool]:
    """Single value matching of an IS key; several values: any."""
    try:
        numbers = [int(v) for v in values]
    except ValueError:
        raise MatchingValueError(f"{keyword}: not an integer string", keyword) from None
    return column.in_(numbers)


def match_modalities(values: Sequence[str], dialect: str) -> ColumnElement[bool]:
    """ModalitiesInStudy: the study has a series of one of `values` (wildcards allowed)."""
    s = aliased(Series)
    return (select(s.id).where(s.study_pk == Study.id,
                               match_text(s.modality, values, dialect)).exists())


def condition(attribute: Attribute, values: Sequence[str], dialect: str
              ) -> ColumnElement[bool] | None:
    """The SQL condition for `attribute` given `values` (the key's values, as text); None for
    universal matching (no value, or '*')."""
    values = [v for v in values if v != ""]
    if not values or values == ["*"] or attribute.matching is Matching.RETURN_ONLY:
        return None
    kw = attribute.keyword
    column = (attribute.match_column or attribute.column)()
    match attribute.matching:
        case Matching.TEXT:
            return match_text(column, values, dialect)
        case Matching.PERSON_NAME:
            return match_text(column, [match_key(v) for v in values], dialect)
        case Matching.UID:
            return match_uids(column, values, kw)
        case Matching.DATE:
            return match_dates(column, values, kw)
        case Matching.TIME:
            return match_times(column, values, kw)
        case Matching.NUMBER:
            return match_numbers(column, values, kw)
        case Matching.MODALITIES:
            return match_modalities(values, dialect)
    raise AssertionError(attribute.matching)


# -- the query -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Query:
    """A checked C-FIND / C-MOVE / C-GET identifier: the level, and each key's values as text
    (a key of several values, 'A\\B', is the list ['A', 'B']; an empty key, [])."""

    model: InformationModel
    level: QueryLevel
    keys: Mapping[str, Sequence[str]]

    @classmethod
    def build(cls, model: InformationModel, level: str, keys: Mapping[str, Sequence[str]]
              ) -> Query:
        """Raises IdentifierError for a level the model lacks or a key below the level."""
        try:
            query_level = QueryLevel(level.strip().upper())
        except ValueError:
            raise IdentifierError(f"unknown QueryRetrieveLevel {level[:16]!r}",
                                  "QueryRetrieveLevel") from None
        if query_level not in model.levels:
            raise IdentifierError(f"no {query_level} level in the {model} information model",
                                  "QueryRetrieveLevel")
        for keyword in keys:
            attribute = ATTRIBUTES.get(keyword)
            if attribute is not None and attribute.level.depth > query_level.depth:
                raise IdentifierError(f"{keyword} is a {attribute.level} key, below the "
                                      f"{query_level} level", keyword)
        return cls(model, query_level, dict(keys))

    def return_keys(self) -> list[Attribute]:
        """The requested keys the index fills, in the order they were asked for."""
        return [ATTRIBUTES[k] for k in self.keys if k in ATTRIBUTES]


_FROM = {P: Patient, ST: Study, SE: Series, IM: Instance}


def _joined(query: Select[Any], level: QueryLevel) -> Select[Any]:
    """`query` from the level's table, joined up to the patient."""
    query = query.select_from(_FROM[level])
    if level.depth >= IM.depth:
        query = query.join(Series, Series.id == Instance.series_pk)
    if level.depth >= SE.depth:
        query = query.join(Study, Study.id == Series.study_pk)
    if level.depth >= ST.depth:
        query = query.join(Patient, Patient.id == Study.patient_pk)
    return query


def _where(query: Select[Any], request: Query, dialect: str) -> Select[Any]:
    for keyword, values in request.keys.items():
        attribute = ATTRIBUTES.get(keyword)
        if attribute is None:
            continue
        found = condition(attribute, values, dialect)
        if found is not None:
            query = query.where(found)
    return query


def find_select(request: Query, dialect: str) -> Select[Any]:
    """The select answering `request` at its level: one row per matching entity, one column
    per return key (labelled with its keyword), in the documented order."""
    keys = request.return_keys()
    columns = [a.column().label(a.keyword) for a in keys] or [literal(1).label("_")]
    query = _where(_joined(select(*columns), request.level), request, dialect)
    if request.level is ST:
        query = query.outerjoin(_severe, _severe.id == _severe_result_pk())
        query = query.order_by(_triage_rank(),
                               case((_severe.positive.is_(true()), -_severe.max_probability),
                                    else_=0),
                               Study.id)
    elif request.level is P:
        query = query.order_by(Patient.id)
    elif request.level is SE:
        query = query.order_by(Study.id, Series.series_number, Series.id)
    else:
        query = query.order_by(Series.id, Instance.instance_number, Instance.id)
    return query


FETCH_ROWS = 100  # rows fetched from the database's cursor at a time


def find(engine: Engine, request: Query) -> Iterator[dict[str, Any]]:
    """Each matching entity as {keyword: value} for the request's return keys, read as the
    caller iterates (a server-side cursor on PostgreSQL). Closing the iterator ends the read.

    Raises MatchingValueError for a value its VR cannot match; DatabaseError when the
    database fails (also part-way through).
    """
    keys = request.return_keys()
    query = find_select(request, engine.dialect.name)
    try:
        with reader(engine).connect() as conn:
            result = conn.execution_options(stream_results=True, yield_per=FETCH_ROWS) \
                .execute(query)
            for row in result:
                values = row._mapping
                yield {a.keyword: (a.convert(values[a.keyword]) if a.convert
                                   else values[a.keyword]) for a in keys}
    except SQLAlchemyError as exc:
        raise DatabaseError(f"query failed: {exc.__class__.__name__}") from exc


@dataclass(frozen=True)
class StoredInstance:
    """An instance to send for a C-MOVE or C-GET: its file and how it is encoded."""

    sop_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    file_path: str  # relative to the file store


def _instances_select(request: Query, dialect: str, columns: Sequence[Any]) -> Select[Any]:
    query = _where(_joined(select(*columns), IM), request, dialect)
    return query


def count_instances(engine: Engine, request: Query) -> int:
    """How many instances `request` retrieves (every instance under each matching entity).

    Raises MatchingValueError, DatabaseError.
    """
    query = _instances_select(request, engine.dialect.name, [func.count(Instance.id)])
    try:
        with reader(engine).connect() as conn:
            return int(conn.execute(query).scalar_one())
    except SQLAlchemyError as exc:
        raise DatabaseError(f"count failed: {exc.__class__.__name__}") from exc


def presentations(engine: Engine, request: Query) -> list[tuple[str, str]]:
    """The distinct (SOP Class UID, Transfer Syntax UID) of the instances `request` retrieves.

    Raises MatchingValueError, DatabaseError.
    """
    query = _instances_select(request, engine.dialect.name,
                              [Instance.sop_class_uid, Instance.transfer_syntax_uid]).distinct()
    try:
        with reader(engine).connect() as conn:
            return [(row[0], row[1]) for row in conn.execute(query)]
    except SQLAlchemyError as exc:
        raise DatabaseError(f"query failed: {exc.__class__.__name__}") from exc


def instances(engine: Engine, request: Query) -> Iterator[StoredInstance]:
    """The instances `request` retrieves, series by series in instance order, read as the
    caller iterates.

    Raises MatchingValueError, DatabaseError.
    """
    query = _instances_select(request, engine.dialect.name,
                              [Instance.sop_uid, Instance.sop_class_uid,
                               Instance.transfer_syntax_uid, Instance.file_path]
                              ).order_by(Series.id, Instance.instance_number, Instance.id)
    try:
        with reader(engine).connect() as conn:
            result = conn.execution_options(stream_results=True, yield_per=FETCH_ROWS) \
                .execute(query)
            for row in result:
                yield StoredInstance(row[0], row[1], row[2], row[3])
    except SQLAlchemyError as exc:
        raise DatabaseError(f"query failed: {exc.__class__.__name__}") from exc

"""C-FIND matching over the index (PS3.4 C.2.2.2, C.4.1, C.6.1 and C.6.2).

The keys the node matches and returns are the table `storage.query_keys.ATTRIBUTES` (keyword
-> level, matching type, column); one function per PS3.4 C.2.2.2 matching type
(`storage.matching`) turns a key's value into a SQL condition, parameterized, wildcards
escaped. `find` runs one select per query, over the patient / study / series / instance
tables, and yields one row at a time from the database's cursor (a server-side cursor on
PostgreSQL): a 10,000-study answer is never a list in memory.

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

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, Select, case, func, literal, select, true
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.sql.elements import ColumnElement

from storage.db import reader
from storage.errors import DatabaseError
from storage.matching import (
    IdentifierError,
    Matching,
    match_dates,
    match_modalities,
    match_numbers,
    match_text,
    match_times,
    match_uids,
)
from storage.models import Instance, Patient, Series, Study
from storage.person_names import match_key
from storage.query_keys import (
    ATTRIBUTES,
    IM,
    SE,
    SEVERE,
    ST,
    Attribute,
    InformationModel,
    P,
    QueryLevel,
    severe_result_pk,
    triage_rank,
)


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
        query = query.outerjoin(SEVERE, SEVERE.id == severe_result_pk())
        query = query.order_by(triage_rank(),
                               case((SEVERE.positive.is_(true()), -SEVERE.max_probability),
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
    for row in _streamed(engine, find_select(request, engine.dialect.name)):
        values = row._mapping
        yield {a.keyword: (a.convert(values[a.keyword]) if a.convert else values[a.keyword])
               for a in keys}


def _streamed(engine: Engine, query: Select[Any]) -> Iterator[Any]:
    """The rows of `query`, FETCH_ROWS at a time from a server-side cursor (PostgreSQL), as
    the caller iterates; the cursor is closed when the caller stops early (a cancelled
    answer). Raises DatabaseError when the database fails, also part-way through."""
    try:
        with reader(engine).connect() as conn:
            result = conn.execution_options(stream_results=True, yield_per=FETCH_ROWS) \
                .execute(query)
            try:
                yield from result
            finally:
                result.close()
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
    for row in _streamed(engine, query):
        yield StoredInstance(row[0], row[1], row[2], row[3])

"""Study-level search for QIDO-RS (PS3.18 10.6): the matching the HTTP side offers, in SQL.

Matching types (PS3.4 C.2.2.2): StudyInstanceUID by list of UIDs; StudyDate single value or
range (either end open); AccessionNumber single value, with `*` and `?` wildcards; Modalities
InStudy single value. Patient attributes are not matched and not returned (the node's HTTP
side serves no patient names or IDs).
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Engine, and_, func, select

from storage.db import reader
from storage.models import Instance, Series, Study


@dataclass(frozen=True)
class StudyQuery:
    study_uids: tuple[str, ...] = ()
    date_from: str | None = None  # YYYYMMDD, inclusive
    date_to: str | None = None
    accession: str | None = None  # `*` any run of characters, `?` one character
    modality: str | None = None
    limit: int = 100
    offset: int = 0


@dataclass(frozen=True)
class StudyMatch:
    study_uid: str
    study_date: str
    study_time: str
    accession_number: str
    study_description: str
    modalities: tuple[str, ...]
    series: int
    instances: int


def _like(pattern: str) -> str:
    escaped = pattern.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped.replace("*", "%").replace("?", "_")


def search_studies(engine: Engine, q: StudyQuery) -> list[StudyMatch]:
    """Studies matching `q`, by StudyInstanceUID order within the page (offset, limit)."""
    query = select(Study.id, Study.study_uid, Study.study_date, Study.study_time,
                   Study.accession_number, Study.study_description)
    if q.study_uids:
        query = query.where(Study.study_uid.in_(q.study_uids))
    if q.date_from is not None:
        query = query.where(Study.study_date >= q.date_from, Study.study_date != "")
    if q.date_to is not None:
        query = query.where(Study.study_date <= q.date_to, Study.study_date != "")
    if q.accession is not None:
        if "*" in q.accession or "?" in q.accession:
            query = query.where(Study.accession_number.like(_like(q.accession), escape="\\"))
        else:
            query = query.where(Study.accession_number == q.accession)
    if q.modality is not None:
        query = query.where(Study.id.in_(select(Series.study_pk)
                                         .where(Series.modality == q.modality)))
    query = query.order_by(Study.id).offset(q.offset).limit(q.limit)
    with reader(engine).connect() as conn:
        studies = conn.execute(query).all()
        pks = [s.id for s in studies]
        counts = {pk: (n_series, n_inst) for pk, n_series, n_inst in conn.execute(
            select(Series.study_pk, func.count(func.distinct(Series.id)), func.count(Instance.id))
            .outerjoin(Instance, and_(Instance.series_pk == Series.id))
            .where(Series.study_pk.in_(pks)).group_by(Series.study_pk))} if pks else {}
        modalities: dict[int, set[str]] = {}
        if pks:
            for pk, modality in conn.execute(select(Series.study_pk, Series.modality).distinct()
                                             .where(Series.study_pk.in_(pks))):
                if modality:
                    modalities.setdefault(pk, set()).add(modality)
    return [StudyMatch(s.study_uid, s.study_date, s.study_time, s.accession_number,
                       s.study_description, tuple(sorted(modalities.get(s.id, ()))),
                       int(counts.get(s.id, (0, 0))[0]), int(counts.get(s.id, (0, 0))[1]))
            for s in studies]

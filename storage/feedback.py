"""Readers' feedback per study and label: the finding is present or absent. Against the
model's call on the result it was given for, it confirms or corrects it; the newest word on
a label is the one that counts (for agreement figures and the label export)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Engine, func, insert, select

from storage.db import reader
from storage.errors import StorageError
from storage.models import Feedback, Instance, Series, Study, TriageResult, utcnow


class UnknownStudyError(StorageError):
    """No study with that StudyInstanceUID is in the index."""


class ResultMismatchError(StorageError):
    """The result named does not belong to the study."""


@dataclass(frozen=True)
class FeedbackEntry:
    label: str
    present: bool
    model_call: bool | None
    verdict: str  # confirm / correct / label (no result to judge)
    author: str
    created_at: datetime
    result_pk: int | None


@dataclass(frozen=True)
class Agreement:
    label: str
    confirmed: int
    corrected: int

    @property
    def ratio(self) -> float | None:
        judged = self.confirmed + self.corrected
        return self.confirmed / judged if judged else None


@dataclass(frozen=True)
class ExportStudy:
    """The newest word on each label of a study, the series of the result it judged and
    that series' instances (SOPInstanceUID, file path in the store)."""

    study_uid: str
    series_uid: str
    labels: dict[str, bool]
    instances: list[tuple[str, str]]


class FeedbackStore:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def add(self, study_uid: str, labels: Mapping[str, bool], *, author: str,
            token_pk: int | None, result_pk: int | None) -> list[FeedbackEntry]:
        """Record one reader's word on each label given, in one transaction."""
        if not labels:
            raise ValueError("labels: give at least one label")
        now = utcnow()
        with self.engine.begin() as conn:
            study_pk = conn.execute(select(Study.id).where(Study.study_uid == study_uid)
                                    ).scalar_one_or_none()
            if study_pk is None:
                raise UnknownStudyError(f"no study {study_uid}")
            calls: dict[str, bool] = {}
            if result_pk is not None:
                row = conn.execute(
                    select(TriageResult.calls).join(Series, Series.id == TriageResult.series_pk)
                    .where(TriageResult.id == result_pk, Series.study_pk == study_pk)).first()
                if row is None:
                    raise ResultMismatchError(f"result {result_pk} is not of study {study_uid}")
                calls = json.loads(row[0])
            entries = []
            for label, present in labels.items():
                call = calls.get(label) if result_pk is not None else None
                verdict = "label" if call is None else ("confirm" if call == present
                                                        else "correct")
                entries.append(FeedbackEntry(label, bool(present), call, verdict, author[:64],
                                             now, result_pk))
            conn.execute(insert(Feedback), [
                {"study_pk": study_pk, "result_pk": e.result_pk, "label": e.label,
                 "present": e.present, "model_call": e.model_call, "verdict": e.verdict,
                 "token_pk": token_pk, "author": e.author, "created_at": e.created_at}
                for e in entries])
        return entries

    def for_study(self, study_uid: str) -> list[FeedbackEntry]:
        query = (select(Feedback.__table__).join(Study, Study.id == Feedback.study_pk)
                 .where(Study.study_uid == study_uid).order_by(Feedback.id))
        with reader(self.engine).connect() as conn:
            return [FeedbackEntry(f.label, f.present, f.model_call, f.verdict, f.author,
                                  f.created_at, f.result_pk)
                    for f in conn.execute(query)]

    def count_since(self, since: datetime | None) -> int:
        """Labels given (one per study and label a reader judged, every word counted) at or
        after `since`; all of them when None."""
        query = select(func.count()).select_from(Feedback)
        if since is not None:
            query = query.where(Feedback.created_at >= since)
        with reader(self.engine).connect() as conn:
            return int(conn.execute(query).scalar_one())

    def agreement(self) -> list[Agreement]:
        """Per label, over the newest word on each study and label that judged a result."""
        newest = (select(func.max(Feedback.id).label("id"))
                  .where(Feedback.model_call.is_not(None))
                  .group_by(Feedback.study_pk, Feedback.label).subquery())
        query = (select(Feedback.label, Feedback.verdict, func.count())
                 .where(Feedback.id.in_(select(newest.c.id)))
                 .group_by(Feedback.label, Feedback.verdict))
        counts: dict[str, dict[str, int]] = {}
        with reader(self.engine).connect() as conn:
            for label, verdict, n in conn.execute(query):
                counts.setdefault(label, {})[verdict] = int(n)
        return [Agreement(label, c.get("confirm", 0), c.get("correct", 0))
                for label, c in sorted(counts.items())]

    def verdict_totals(self) -> dict[tuple[str, str], int]:
        """(label, confirm|correct) -> every word ever given on a result: a counter that only
        grows, so that Prometheus can compute the agreement over any window."""
        query = (select(Feedback.label, Feedback.verdict, func.count())
                 .where(Feedback.model_call.is_not(None))
                 .group_by(Feedback.label, Feedback.verdict))
        with reader(self.engine).connect() as conn:
            return {(str(label), str(verdict)): int(n)
                    for label, verdict, n in conn.execute(query)}

    def agreement_by_day(self, since: datetime) -> list[tuple[str, str, int, int]]:
        """(day YYYY-MM-DD, label, confirmed, corrected) of every word on a result given
        since `since`, by the day (UTC) it was given."""
        day = func.date(Feedback.created_at)
        query = (select(day, Feedback.label, Feedback.verdict, func.count())
                 .where(Feedback.model_call.is_not(None), Feedback.created_at >= since)
                 .group_by(day, Feedback.label, Feedback.verdict))
        counts: dict[tuple[str, str], dict[str, int]] = {}
        with reader(self.engine).connect() as conn:
            for d, label, verdict, n in conn.execute(query):
                counts.setdefault((str(d), label), {})[verdict] = int(n)
        return [(d, label, c.get("confirm", 0), c.get("correct", 0))
                for (d, label), c in sorted(counts.items())]

    def newest_labels(self) -> dict[str, dict[str, bool]]:
        """StudyInstanceUID -> label -> present, the newest word on each."""
        newest = (select(func.max(Feedback.id).label("id"))
                  .group_by(Feedback.study_pk, Feedback.label).subquery())
        query = (select(Study.study_uid, Feedback.label, Feedback.present)
                 .join(Study, Study.id == Feedback.study_pk)
                 .where(Feedback.id.in_(select(newest.c.id))))
        out: dict[str, dict[str, bool]] = {}
        with reader(self.engine).connect() as conn:
            for uid, label, present in conn.execute(query):
                out.setdefault(uid, {})[label] = bool(present)
        return out

    def for_export(self) -> list[ExportStudy]:
        """Every study with feedback on a result, for the label export."""
        newest = (select(func.max(Feedback.id).label("id"))
                  .group_by(Feedback.study_pk, Feedback.label).subquery())
        query = (select(Study.study_uid, Feedback.label, Feedback.present, Feedback.result_pk,
                        Feedback.id)
                 .join(Study, Study.id == Feedback.study_pk)
                 .where(Feedback.id.in_(select(newest.c.id))).order_by(Feedback.id))
        labels: dict[str, dict[str, bool]] = {}
        judged: dict[str, int] = {}  # the result of the newest word on the study
        with reader(self.engine).connect() as conn:
            for uid, label, present, result_pk, _ in conn.execute(query):
                labels.setdefault(uid, {})[label] = bool(present)
                if result_pk is not None:
                    judged[uid] = int(result_pk)
            out = []
            for uid, result_pk in judged.items():
                series_pk, series_uid = conn.execute(
                    select(Series.id, Series.series_uid).join(
                        TriageResult, TriageResult.series_pk == Series.id)
                    .where(TriageResult.id == result_pk)).one()
                instances = [(sop, path) for sop, path in conn.execute(
                    select(Instance.sop_uid, Instance.file_path)
                    .where(Instance.series_pk == series_pk).order_by(Instance.id))]
                out.append(ExportStudy(uid, series_uid, labels[uid], instances))
        return out

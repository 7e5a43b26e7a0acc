"""What the worker reads from and writes to the index for one triage job."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Connection, Engine, insert, select, update

from storage.db import reader
from storage.models import (
    Instance,
    Series,
    SeriesStatus,
    SlicePrediction,
    Study,
    TriageResult,
    utcnow,
)


@dataclass(frozen=True)
class SeriesInstance:
    pk: int
    sop_uid: str
    file_path: str
    instance_number: int | None
    image_position: str
    image_orientation: str
    rows: int | None
    columns: int | None
    number_of_frames: int | None


@dataclass(frozen=True)
class SeriesForTriage:
    pk: int
    series_uid: str
    study_uid: str
    revision: int
    last_received_at: datetime
    instances: tuple[SeriesInstance, ...]


@dataclass(frozen=True)
class NewResult:
    series_pk: int
    job_pk: int | None
    series_revision: int
    model_name: str
    model_version: str
    probabilities: dict[str, float]
    calls: dict[str, bool]
    slices: Sequence[tuple[int, int, Sequence[float]]]  # (instance pk, frame, probabilities)
    sr_sop_uid: str
    latency_seconds: float | None
    complete: bool = True  # False: the volume had a gap, short coverage or unread slices
    notes: str = ""  # what the volume left out, and why it is incomplete
    model_pk: int | None = None  # the registry entry that produced it
    inference_seconds: float | None = None  # the model's own time (SeriesPrediction)


@dataclass(frozen=True)
class EarlierReport:
    """The newest SR the node made on a series: a new result names it as its predecessor."""

    StudyInstanceUID: str  # DICOM keywords: highdicom reads these to reference it
    SeriesInstanceUID: str
    SOPClassUID: str
    SOPInstanceUID: str


class Results:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def earlier_report(self, series_pk: int) -> EarlierReport | None:
        """The SR of the newest result on the series, if it is still in the index."""
        sr_series = Series.__table__.alias("sr_series")
        with reader(self.engine).connect() as conn:
            row = conn.execute(
                select(Study.study_uid, sr_series.c.series_uid, Instance.sop_class_uid,
                       Instance.sop_uid)
                .select_from(TriageResult)
                .join(Instance, Instance.sop_uid == TriageResult.sr_sop_uid)
                .join(sr_series, sr_series.c.id == Instance.series_pk)
                .join(Study, Study.id == sr_series.c.study_pk)
                .where(TriageResult.series_pk == series_pk)
                .order_by(TriageResult.id.desc()).limit(1)).first()
        return EarlierReport(*row) if row is not None else None

    def read_before(self, series_pk: int, revision: int) -> bool:
        """Whether the series already has a result of this revision (its instances unchanged
        since): a requeue reads it again, and its time since the last slice is no latency."""
        with reader(self.engine).connect() as conn:
            return conn.execute(
                select(TriageResult.id).where(TriageResult.series_pk == series_pk,
                                              TriageResult.series_revision == revision)
                .limit(1)).first() is not None

    def series_for_triage(self, series_pk: int) -> SeriesForTriage:
        with reader(self.engine).connect() as conn:
            head = conn.execute(
                select(Series.id, Series.series_uid, Study.study_uid, Series.revision,
                       Series.last_received_at)
                .join(Study, Study.id == Series.study_pk).where(Series.id == series_pk)).one()
            rows = conn.execute(
                select(Instance.id, Instance.sop_uid, Instance.file_path, Instance.instance_number,
                       Instance.image_position, Instance.image_orientation, Instance.rows,
                       Instance.columns, Instance.number_of_frames)
                .where(Instance.series_pk == series_pk).order_by(Instance.id)).all()
        return SeriesForTriage(head[0], head[1], head[2], head[3], head[4],
                               tuple(SeriesInstance(*r) for r in rows))

    def set_series_status(self, series_pk: int, status: SeriesStatus, reason: str = "", *,
                          revision: int | None = None, conn: Connection | None = None) -> bool:
        """Set a series' status; with `revision`, only while no new instance has arrived."""
        stmt = update(Series).where(Series.id == series_pk)
        if revision is not None:
            stmt = stmt.where(Series.revision == revision,
                              Series.status != SeriesStatus.RECEIVING)
        stmt = stmt.values(status=status, status_reason=reason[:2000])
        if conn is not None:
            return conn.execute(stmt).rowcount == 1
        with self.engine.begin() as own:
            return own.execute(stmt).rowcount == 1

    @staticmethod
    def add(conn: Connection, result: NewResult) -> int:
        pk = conn.execute(insert(TriageResult).values(
            series_pk=result.series_pk, job_pk=result.job_pk,
            series_revision=result.series_revision, model_name=result.model_name[:64],
            model_version=result.model_version[:64], model_pk=result.model_pk,
            probabilities=json.dumps(result.probabilities), calls=json.dumps(result.calls),
            positive=any(result.calls.values()),
            max_probability=max(result.probabilities.values(), default=0.0),
            slices=len(result.slices), sr_sop_uid=result.sr_sop_uid, created_at=utcnow(),
            latency_seconds=result.latency_seconds, complete=result.complete,
            notes=result.notes, inference_seconds=result.inference_seconds,
        ).returning(TriageResult.id)).scalar_one()
        if result.slices:
            conn.execute(insert(SlicePrediction), [
                {"result_pk": pk, "instance_pk": inst, "frame": frame, "position": i,
                 "probabilities": json.dumps([round(float(p), 6) for p in probs])}
                for i, (inst, frame, probs) in enumerate(result.slices)])
        return int(pk)

"""One study in detail, for the study page and API: its series, the newest result of each
with its per-slice curve, and where each slice's file is."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine, func, literal, select

from storage.db import reader
from storage.models import Instance, Series, SlicePrediction, Study, TriageResult


@dataclass(frozen=True)
class SliceScore:
    position: int
    sop_uid: str
    frame: int
    probabilities: list[float]  # in the result's label order (ml.labels.LABELS)


@dataclass(frozen=True)
class ResultDetail:
    pk: int
    model_name: str
    model_version: str
    probabilities: dict[str, float]
    calls: dict[str, bool]
    complete: bool
    notes: str
    created_at: datetime
    latency_seconds: float | None
    slices: int
    sr_sop_uid: str
    curve: list[SliceScore] = field(default_factory=list)
    sr_file: str | None = None  # the SR's file in the store; None when it is not there
    inference_seconds: float | None = None  # the model's own time


@dataclass(frozen=True)
class SeriesDetail:
    pk: int
    series_uid: str
    series_number: int | None
    series_description: str
    modality: str
    body_part: str
    status: str
    status_reason: str
    instance_count: int
    first_received_at: datetime
    last_received_at: datetime
    result: ResultDetail | None


@dataclass(frozen=True)
class StudyDetail:
    pk: int
    study_uid: str
    accession_number: str
    study_date: str
    study_time: str
    study_description: str
    series: list[SeriesDetail]


@dataclass(frozen=True)
class SliceFile:
    file_path: str  # relative to the file store
    frame: int
    count: int  # slices in the series, in the order the index counts


@dataclass(frozen=True)
class ResultVolume:
    """The slices the newest result of a series read, in its order, and which model read
    them (the registry's name and version, and its row: None for a result made before the
    registry)."""

    model_name: str
    model_version: str
    slices: list[tuple[str, int]]  # (file path in the store, frame)
    model_pk: int | None = None


class StudyReader:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def detail(self, study_uid: str) -> StudyDetail | None:
        with reader(self.engine).connect() as conn:
            study = conn.execute(select(Study.__table__).where(Study.study_uid == study_uid)
                                 ).first()
            if study is None:
                return None
            series = [self._series(conn, s) for s in conn.execute(
                select(Series.__table__).where(Series.study_pk == study.id)
                .order_by(Series.series_number, Series.id))]
        return StudyDetail(study.id, study.study_uid, study.accession_number, study.study_date,
                           study.study_time, study.study_description, series)

    @staticmethod
    def _series(conn: Connection, s: Any) -> SeriesDetail:
        result = conn.execute(select(TriageResult.__table__)
                              .where(TriageResult.series_pk == s.id)
                              .order_by(TriageResult.id.desc()).limit(1)).first()
        detail = None
        if result is not None:
            curve = [SliceScore(int(pos), sop, int(frame), json.loads(probs))
                     for pos, sop, frame, probs in conn.execute(
                         select(SlicePrediction.position, Instance.sop_uid, SlicePrediction.frame,
                                SlicePrediction.probabilities)
                         .join(Instance, Instance.id == SlicePrediction.instance_pk)
                         .where(SlicePrediction.result_pk == result.id)
                         .order_by(SlicePrediction.position))]
            sr_file = conn.execute(select(Instance.file_path).where(
                Instance.sop_uid == result.sr_sop_uid)).scalar() if result.sr_sop_uid else None
            detail = ResultDetail(result.id, result.model_name, result.model_version,
                                  json.loads(result.probabilities), json.loads(result.calls),
                                  bool(result.complete), result.notes or "", result.created_at,
                                  result.latency_seconds, result.slices, result.sr_sop_uid,
                                  curve, sr_file, result.inference_seconds)
        return SeriesDetail(s.id, s.series_uid, s.series_number, s.series_description,
                            s.modality, s.body_part, str(s.status), s.status_reason,
                            s.instance_count, s.first_received_at, s.last_received_at, detail)

    def slice_file(self, study_uid: str, series_uid: str, index: int) -> SliceFile | None:
        """Slice `index` of a series of the study: in the order its newest result read the
        volume when there is one (the curve's positions), else by instance number. None when
        the study has no such series or the index is out of range."""
        with reader(self.engine).connect() as conn:
            series_pk = conn.execute(
                select(Series.id).join(Study, Study.id == Series.study_pk)
                .where(Study.study_uid == study_uid, Series.series_uid == series_uid)
            ).scalar_one_or_none()
            if series_pk is None or index < 0:
                return None
            result_pk = conn.execute(select(func.max(TriageResult.id))
                                     .where(TriageResult.series_pk == series_pk)).scalar()
            if result_pk is not None:
                count = conn.execute(select(func.count()).select_from(SlicePrediction)
                                     .where(SlicePrediction.result_pk == result_pk)).scalar_one()
                row = conn.execute(
                    select(Instance.file_path, SlicePrediction.frame)
                    .join(Instance, Instance.id == SlicePrediction.instance_pk)
                    .where(SlicePrediction.result_pk == result_pk,
                           SlicePrediction.position == index)).first()
            else:
                count = conn.execute(select(func.count()).select_from(Instance)
                                     .where(Instance.series_pk == series_pk)).scalar_one()
                row = conn.execute(
                    select(Instance.file_path, literal(0))
                    .where(Instance.series_pk == series_pk)
                    .order_by(Instance.instance_number, Instance.id).offset(index).limit(1)
                ).first()
        if row is None:
            return None
        return SliceFile(row[0], int(row[1]), int(count))

    def result_volume(self, study_uid: str, series_uid: str) -> ResultVolume | None:
        """The volume of the series' newest result; None without a result or such series."""
        with reader(self.engine).connect() as conn:
            head = conn.execute(
                select(TriageResult.id, TriageResult.model_name, TriageResult.model_version,
                       TriageResult.model_pk)
                .join(Series, Series.id == TriageResult.series_pk)
                .join(Study, Study.id == Series.study_pk)
                .where(Study.study_uid == study_uid, Series.series_uid == series_uid)
                .order_by(TriageResult.id.desc()).limit(1)).first()
            if head is None:
                return None
            slices = [(path, int(frame)) for path, frame in conn.execute(
                select(Instance.file_path, SlicePrediction.frame)
                .join(Instance, Instance.id == SlicePrediction.instance_pk)
                .where(SlicePrediction.result_pk == head[0])
                .order_by(SlicePrediction.position))]
        return ResultVolume(head[1], head[2], slices, head[3])

"""The JSON the API answers with, apart from the tables.

One naming convention, for the API and `ichtriage worklist --json` alike: a DICOM attribute
of the object itself is named by its DICOM keyword (PS3.6: `StudyInstanceUID`,
`AccessionNumber`, `SeriesNumber`, `NumberOfSeriesRelatedInstances`); everything the node
adds is snake_case (`priority`, `probabilities`, `last_slice_at`), and a UID that names
another object ends in `_uid` (`shown_series_uid`, `sr_uid`). Times are ISO 8601 in UTC,
one form throughout: `2026-12-01T01:00:26.123Z` (milliseconds, `Z`; `iso_utc`).
Patient names and IDs are not in the API.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from pydantic import BaseModel, Field, PlainSerializer, StrictBool

from ml.labels import LABELS
from node.http.bounds import RowId
from storage.feedback import FeedbackEntry
from storage.studies import ResultDetail, SeriesDetail, StudyDetail
from storage.worklist import WorklistEntry


def iso_utc(value: datetime | str) -> str:
    """A time as the API writes it: '2026-12-01T01:00:26.123Z'. A naive datetime (SQLite
    keeps no zone) is UTC; '' stays ''."""
    if isinstance(value, str):
        if not value:
            return ""
        value = datetime.fromisoformat(value)
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


UtcTime = Annotated[datetime, PlainSerializer(iso_utc, return_type=str, when_used="json")]


class SeriesCall(BaseModel):
    SeriesInstanceUID: str
    SeriesNumber: int | None
    SeriesDescription: str
    positive: bool
    complete: bool
    any: float = Field(description="probability of any hemorrhage")


class WorklistItem(BaseModel):
    StudyInstanceUID: str
    AccessionNumber: str
    StudyDate: str
    StudyDescription: str
    status: str = Field(description="receiving, queued, processing, failed, done, not_eligible")
    priority: str = Field(description="high (a finding is called), incomplete (a negative on "
                                      "an incomplete volume) or routine")
    probabilities: dict[str, float]
    calls: dict[str, bool]
    model_version: str
    last_slice_at: str = Field(description="when the last image arrived (ISO 8601, UTC)")
    result_at: str
    seconds_to_result: float | None
    reason: str
    complete: bool | None
    updated: bool
    series: list[SeriesCall]
    shown_series_uid: str

    @classmethod
    def of(cls, e: WorklistEntry) -> WorklistItem:
        return cls(
            StudyInstanceUID=e.study_uid, AccessionNumber=e.accession_number,
            StudyDate=e.study_date, StudyDescription=e.study_description, status=e.status,
            priority=e.priority, probabilities=e.probabilities, calls=e.calls,
            model_version=e.model_version, last_slice_at=iso_utc(e.last_slice_at),
            result_at=iso_utc(e.result_at), seconds_to_result=e.seconds_to_result, reason=e.reason,
            complete=e.complete, updated=e.updated, shown_series_uid=e.shown_series_uid,
            series=[SeriesCall(SeriesInstanceUID=str(s["series_uid"]),
                               SeriesNumber=s["series_number"],  # type: ignore[arg-type]
                               SeriesDescription=str(s["series_description"]),
                               positive=bool(s["positive"]), complete=bool(s["complete"]),
                               any=float(s["any"]))  # type: ignore[arg-type]
                    for s in e.series])


class WorklistPage(BaseModel):
    items: list[WorklistItem]
    next_cursor: str | None = Field(description="give as ?cursor= for the next page; "
                                                "null on the last page")


class SlicePoint(BaseModel):
    position: int = Field(description="slice index in the order the model read the volume")
    SOPInstanceUID: str
    frame: int
    probabilities: dict[str, float]


class KeySlice(BaseModel):
    label: str
    position: int
    probability: float


class ResultOut(BaseModel):
    id: int
    model_name: str
    model_version: str
    probabilities: dict[str, float]
    calls: dict[str, bool]
    complete: bool
    notes: str
    created_at: UtcTime
    seconds_to_result: float | None
    inference_seconds: float | None = Field(description="the model's own time on the series")
    slices: int
    sr_uid: str
    sr_text: str | None = Field(default=None, description="the SR's content tree as text "
                                "lines, indented by depth: findings, probabilities, model, "
                                "key images (node.triage.sr_text); null when its file is not "
                                "in the store")
    curve: list[SlicePoint]
    key_slices: list[KeySlice]

    @classmethod
    def of(cls, r: ResultDetail) -> ResultOut:
        curve = [SlicePoint(position=s.position, SOPInstanceUID=s.sop_uid, frame=s.frame,
                            probabilities=dict(zip(LABELS, s.probabilities, strict=False)))
                 for s in r.curve]
        return cls(id=r.pk, model_name=r.model_name, model_version=r.model_version,
                   probabilities=r.probabilities, calls=r.calls, complete=r.complete,
                   notes=r.notes, created_at=r.created_at, seconds_to_result=r.latency_seconds,
                   inference_seconds=r.inference_seconds, slices=r.slices,
                   sr_uid=r.sr_sop_uid, curve=curve,
                   key_slices=key_slices(r, curve))


def key_slices(r: ResultDetail, curve: list[SlicePoint]) -> list[KeySlice]:
    """The most probable slice of each label called positive; of "any" when none is."""
    labels = [label for label in LABELS if r.calls.get(label)] or ["any"]
    out = []
    for label in labels:
        best = max(curve, key=lambda p: p.probabilities.get(label, 0.0), default=None)
        if best is not None:
            out.append(KeySlice(label=label, position=best.position,
                                probability=round(best.probabilities.get(label, 0.0), 4)))
    return out


class SeriesOut(BaseModel):
    SeriesInstanceUID: str
    SeriesNumber: int | None
    SeriesDescription: str
    Modality: str
    BodyPartExamined: str
    NumberOfSeriesRelatedInstances: int
    status: str
    status_reason: str
    first_received_at: UtcTime
    last_received_at: UtcTime
    result: ResultOut | None

    @classmethod
    def of(cls, s: SeriesDetail) -> SeriesOut:
        return cls(SeriesInstanceUID=s.series_uid, SeriesNumber=s.series_number,
                   SeriesDescription=s.series_description, Modality=s.modality,
                   BodyPartExamined=s.body_part, NumberOfSeriesRelatedInstances=s.instance_count,
                   status=s.status, status_reason=s.status_reason,
                   first_received_at=s.first_received_at, last_received_at=s.last_received_at,
                   result=ResultOut.of(s.result) if s.result else None)


class FeedbackOut(BaseModel):
    label: str
    present: bool
    model_call: bool | None
    verdict: str = Field(description="confirm or correct (the model's call), or label (no "
                                     "result to judge)")
    author: str
    created_at: UtcTime
    result_id: int | None

    @classmethod
    def of(cls, f: FeedbackEntry) -> FeedbackOut:
        return cls(label=f.label, present=f.present, model_call=f.model_call,
                   verdict=f.verdict, author=f.author, created_at=f.created_at,
                   result_id=f.result_pk)


class StudyOut(BaseModel):
    StudyInstanceUID: str
    AccessionNumber: str
    StudyDate: str
    StudyTime: str
    StudyDescription: str
    summary: WorklistItem | None = Field(description="the study's worklist row")
    series: list[SeriesOut]
    feedback: list[FeedbackOut]
    feedback_result_id: int | None = Field(description="the result feedback judges: the newest "
                                                       "of the series the worklist shows")

    @classmethod
    def of(cls, d: StudyDetail, summary: WorklistEntry | None,
           feedback: list[FeedbackEntry]) -> StudyOut:
        series = [SeriesOut.of(s) for s in d.series]
        shown = next((s.result.id for s in series if s.result is not None and summary
                      and s.SeriesInstanceUID == summary.shown_series_uid), None)
        return cls(StudyInstanceUID=d.study_uid, AccessionNumber=d.accession_number,
                   StudyDate=d.study_date, StudyTime=d.study_time,
                   StudyDescription=d.study_description,
                   summary=WorklistItem.of(summary) if summary else None, series=series,
                   feedback=[FeedbackOut.of(f) for f in feedback], feedback_result_id=shown)


class FeedbackIn(BaseModel):
    model_config = {"extra": "forbid"}

    result_id: RowId | None = Field(default=None, description="the result judged (see "
                                                               "feedback_result_id)")
    labels: dict[str, StrictBool] = Field(description="label -> the finding is present "
                                                      "(JSON true or false, nothing else)",
                                    min_length=1, max_length=len(LABELS))


class Health(BaseModel):
    status: str = Field(description="ok, or degraded when a check fails")
    problems: list[str] = Field(description="what failed, in words; empty when ok")
    database: bool
    free_bytes: int | None
    free_space_ok: bool
    worker_alive: bool | None = Field(description="a triage worker (of this node or a "
                                                  "stand-alone one) beat lately or holds a "
                                                  "live job lease; null: database down")
    workers_beating: int | None
    last_worker_beat_at: UtcTime | None
    queue_depth: int | None
    failed_jobs: int | None

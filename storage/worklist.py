"""The worklist: one row per study, likely bleeds first.

Studies of triage tools found that flags alone did not speed reading; reordering the worklist
did. So: studies the model calls positive come first, the most probable first; then studies
whose negative result is provisional (the volume had a gap, too little coverage or unread
slices: priority "incomplete"); then every other study in order of arrival.

A study with several triaged series (thin and thick, soft tissue and bone kernel, a repeat)
shows the most severe result of its series: a positive call before a negative one, an
incomplete negative before a complete one, then the higher probability of any hemorrhage.
A triage list must not hide a bleed one series shows; the row names the series shown, lists
every series' call, and says when they disagree.

A study's status sums up its image series (reports, the node's own among them, are left out):
the most pressing of receiving / queued / processing / failed, else done, else not eligible.
Its last slice is the last image received, not a report.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime

from sqlalchemy import Engine, Select, func, select

from storage.db import reader
from storage.models import Patient, Series, SeriesStatus, Study, TriageResult

# The most pressing first: the study shows the first of these that any of its series has.
_STATUS_ORDER = ("processing", "queued", "receiving", "failed", "done", "not_eligible")


@dataclass(frozen=True)
class WorklistEntry:
    rank: int
    study_uid: str
    status: str
    # "high" when the model calls a hemorrhage; "incomplete" when it calls none on a volume
    # with a gap, too little coverage or unread slices (no confident negative); else "routine"
    priority: str
    patient_name: str
    patient_id: str
    accession_number: str
    study_date: str
    study_description: str
    probabilities: dict[str, float] = field(default_factory=dict)
    calls: dict[str, bool] = field(default_factory=dict)
    model_version: str = ""
    last_slice_at: str = ""  # the last image received (reports are not images)
    result_at: str = ""
    seconds_to_result: float | None = None
    reason: str = ""  # why a series failed or was not triaged; what a result left out
    complete: bool | None = None  # whether the result shown read a complete volume
    updated: bool = False  # the result shown supersedes an earlier one (the series grew)
    # every triaged series of the study: number, description, call, completeness, p(any);
    # the study shows the most severe of them (see _more_severe), the rest are listed here
    series: list[dict[str, object]] = field(default_factory=list)
    shown_series_uid: str = ""  # the series whose result the row shows

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass(frozen=True)
class _Result:
    probabilities: dict[str, float]
    calls: dict[str, bool]
    model_version: str
    created_at: datetime
    latency: float | None
    complete: bool
    notes: str
    updated: bool  # an earlier result on the same series was superseded by this one
    series_uid: str
    series_number: int | None
    series_description: str

    def summary(self) -> dict[str, object]:
        return {"series_uid": self.series_uid, "series_number": self.series_number,
                "series_description": self.series_description,
                "positive": any(self.calls.values()), "complete": self.complete,
                "any": round(float(self.probabilities.get("any", 0.0)), 4)}


@dataclass
class _Study:
    study_uid: str
    patient_name: str
    patient_id: str
    accession: str
    date: str
    description: str
    statuses: list[str] = field(default_factory=list)
    reasons: dict[str, list[str]] = field(default_factory=dict)
    first_at: datetime | None = None
    last_at: datetime | None = None
    result: _Result | None = None
    results: list[_Result] = field(default_factory=list)  # one per triaged series


def worklist(engine: Engine, *, limit: int = 200) -> list[WorklistEntry]:
    recent = (select(Study.id).join(Series, Series.study_pk == Study.id).group_by(Study.id)
              .order_by(func.max(Series.last_received_at).desc()).limit(limit).subquery())
    studies = _load(engine, select(recent.c.id))
    ranked = sorted(studies.values(), key=_sort_key)
    return [_entry(i + 1, s) for i, s in enumerate(ranked)]


def entries_for(engine: Engine, study_pks: Sequence[int]) -> dict[str, WorklistEntry]:
    """The worklist rows of the studies `study_pks`, by StudyInstanceUID (rank 0: the caller
    orders them, e.g. a page of `storage.worklist_pages`)."""
    if not study_pks:
        return {}
    studies = _load(engine, list(study_pks))
    return {uid: _entry(0, s) for uid, s in studies.items()}


def _load(engine: Engine, study_ids: Select[tuple[int]] | list[int]) -> dict[str, _Study]:
    latest = (select(TriageResult.series_pk, func.max(TriageResult.id).label("result_pk"),
                     func.count(TriageResult.id).label("results"))
              .where(TriageResult.series_pk.in_(select(Series.id)
                                                .where(Series.study_pk.in_(study_ids))))
              .group_by(TriageResult.series_pk).subquery())
    query = (
        select(Study.study_uid, Patient.patient_name, Patient.patient_id, Study.accession_number,
               Study.study_date, Study.study_description, Series.status, Series.status_reason,
               Series.first_received_at, Series.last_received_at, TriageResult.probabilities,
               TriageResult.calls, TriageResult.model_version, TriageResult.created_at,
               TriageResult.latency_seconds, TriageResult.complete, TriageResult.notes,
               latest.c.results, Series.modality, Series.series_uid, Series.series_number,
               Series.series_description)
        .join(Patient, Patient.id == Study.patient_pk)
        .join(Series, Series.study_pk == Study.id)
        .outerjoin(latest, latest.c.series_pk == Series.id)
        .outerjoin(TriageResult, TriageResult.id == latest.c.result_pk)
        .where(Study.id.in_(study_ids))
    )
    studies: dict[str, _Study] = {}
    with reader(engine).connect() as conn:
        for row in conn.execute(query):
            s = studies.setdefault(row.study_uid, _Study(
                row.study_uid, row.patient_name, row.patient_id, row.accession_number,
                row.study_date, row.study_description))
            if row.modality == "SR":  # reports (the node's own among them) are not images
                continue
            s.statuses.append(str(row.status))
            if row.status in (SeriesStatus.FAILED, SeriesStatus.NOT_ELIGIBLE) and row.status_reason:
                s.reasons.setdefault(str(row.status), []).append(row.status_reason)
            s.first_at = min(filter(None, (s.first_at, row.first_received_at)))
            s.last_at = max(filter(None, (s.last_at, row.last_received_at)))
            if row.probabilities is not None:
                candidate = _Result(json.loads(row.probabilities), json.loads(row.calls),
                                    row.model_version, row.created_at, row.latency_seconds,
                                    bool(row.complete), row.notes or "", row.results > 1,
                                    row.series_uid, row.series_number,
                                    row.series_description or "")
                s.results.append(candidate)
                if s.result is None or _more_severe(candidate, s.result):
                    s.result = candidate
    return studies


def _more_severe(result: _Result, than: _Result) -> bool:
    """Positive before negative; then an incomplete result before a complete one (it cannot
    vouch for a negative); then the higher probability of any hemorrhage."""
    def key(r: _Result) -> tuple[bool, bool, float]:
        return (any(r.calls.values()), not r.complete, r.probabilities.get("any", 0.0))
    return key(result) > key(than)


def _priority(s: _Study) -> str:
    if s.result is None:
        return "routine"
    if any(s.result.calls.values()):
        return "high"
    return "routine" if s.result.complete else "incomplete"


_RANK = {"high": 0, "incomplete": 1, "routine": 2}


def _sort_key(s: _Study) -> tuple[int, float, float]:
    arrival = s.first_at.timestamp() if s.first_at else 0.0
    priority = _priority(s)
    if priority == "high":
        assert s.result is not None
        return (0, -s.result.probabilities.get("any", 0.0), arrival)
    return (_RANK[priority], 0.0, arrival)


def _entry(rank: int, s: _Study) -> WorklistEntry:
    status = next((st for st in _STATUS_ORDER if st in s.statuses), "not_eligible")
    r = s.result
    reasons = list(dict.fromkeys(s.reasons.get(status, [])))
    if status == "done" and r is not None and r.notes:
        reasons.insert(0, r.notes)
    if len({any(x.calls.values()) for x in s.results}) > 1:
        reasons.append(f"series disagree: shown is series {r.series_number if r else ''}, "
                       f"the most severe of {len(s.results)}")
    return WorklistEntry(
        rank=rank, study_uid=s.study_uid, status=status, priority=_priority(s),
        patient_name=s.patient_name, patient_id=s.patient_id, accession_number=s.accession,
        study_date=s.date, study_description=s.description,
        probabilities={k: round(float(v), 4) for k, v in r.probabilities.items()} if r else {},
        calls=r.calls if r else {},
        model_version=r.model_version if r else "",
        last_slice_at=s.last_at.isoformat() if s.last_at else "",
        result_at=r.created_at.isoformat() if r and isinstance(r.created_at, datetime) else "",
        seconds_to_result=round(r.latency, 3) if r and r.latency is not None else None,
        reason="; ".join(reasons),
        complete=r.complete if r else None,
        updated=r.updated if r else False,
        series=[x.summary() for x in sorted(s.results, key=lambda x: (x.series_number or 0,
                                                                       x.series_uid))],
        shown_series_uid=r.series_uid if r else "",
    )

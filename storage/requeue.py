"""Series queued for triage again by an admin, after a model or device fix: the failed ones,
one study's, or every series received since a time.

Only series the node has triaged or failed are taken: a series still receiving is queued when
it settles, one queued or processing is in the queue already, and one not eligible (the node's
own SRs among them) is no triage series. Each series is marked queued and its job enqueued in
one transaction, guarded by its status, so a series that changed meanwhile is left alone.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Engine, select, update

from storage.db import reader
from storage.errors import StorageError
from storage.jobs import JobQueue
from storage.models import Series, SeriesStatus, Study
from storage.uids import validate_uid

REQUEUEABLE = (SeriesStatus.DONE, SeriesStatus.FAILED)


class UnknownStudyError(StorageError):
    """No study with the Study Instance UID given is in the index."""


@dataclass(frozen=True)
class Selection:
    """Which series: exactly one of the three."""

    failed: bool = False
    study_uid: str | None = None
    since: datetime | None = None

    def __post_init__(self) -> None:
        chosen = [self.failed, self.study_uid is not None, self.since is not None]
        if sum(chosen) != 1:
            raise ValueError("choose one of: the failed series, one study, or a time since")
        if self.study_uid is not None:
            validate_uid(self.study_uid, what="StudyInstanceUID")
        if self.since is not None and self.since.tzinfo is None:
            raise ValueError(f"since: {self.since.isoformat()} has no time zone (add Z or "
                             "+01:00)")


@dataclass(frozen=True)
class RequeuedSeries:
    series_uid: str
    study_uid: str
    was: str  # the status before
    queued: bool  # False: it changed meanwhile (or a dry run); True also when a job for it
    # was queued already (that job then reads the series as it is now)


def chosen_series(engine: Engine, selection: Selection) -> list[tuple[int, str, str, str, int]]:
    """(pk, series UID, study UID, status, revision) of the series `selection` takes."""
    query = (select(Series.id, Series.series_uid, Study.study_uid, Series.status,
                    Series.revision)
             .join(Study, Study.id == Series.study_pk).order_by(Series.id))
    if selection.failed:
        query = query.where(Series.status == SeriesStatus.FAILED)
    else:
        query = query.where(Series.status.in_(REQUEUEABLE))
    if selection.study_uid is not None:
        query = query.where(Study.study_uid == selection.study_uid)
    if selection.since is not None:
        query = query.where(Series.last_received_at >= selection.since)
    with reader(engine).connect() as conn:
        if selection.study_uid is not None and conn.execute(
                select(Study.id).where(Study.study_uid == selection.study_uid)).first() is None:
            raise UnknownStudyError(f"no study {selection.study_uid} in the index")
        return [(r[0], r[1], r[2], str(SeriesStatus(r[3]).value), r[4])
                for r in conn.execute(query).all()]


def requeue(engine: Engine, queue: JobQueue, selection: Selection, *, kind: str,
            lock: Callable[[str], str], reason: str, dry_run: bool = False) -> list[RequeuedSeries]:
    """Queue the chosen series again (`lock(series UID)` is their queueing lock)."""
    done = []
    for pk, series_uid, study_uid, status, revision in chosen_series(engine, selection):
        if dry_run:
            done.append(RequeuedSeries(series_uid, study_uid, status, False))
            continue
        with engine.begin() as conn:
            marked = conn.execute(update(Series).where(
                Series.id == pk, Series.revision == revision, Series.status.in_(REQUEUEABLE),
            ).values(status=SeriesStatus.QUEUED, status_reason=reason[:2000])).rowcount == 1
            if marked:
                queue.enqueue(conn, kind=kind, queueing_lock=lock(series_uid), series_pk=pk,
                              series_revision=revision)
        done.append(RequeuedSeries(series_uid, study_uid, status, marked))
    return done

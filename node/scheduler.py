"""Periodic work of the supervisor: find series that have settled and queue the eligible ones.

A series is complete when no instance of it has arrived for `settle_seconds`: scanners send a
series over one association or several, and the quiet time closes it either way. (Orthanc's
StableAge waits 60 s by default, MONAI Deploy's gateway 5 s.) An instance that arrives later
puts the series back to `receiving`, and it is queued again once it settles.

The default stays short (2 s) because a premature result is no longer silent: the volume of a
partly received series is usually short, has a gap or lacks the top of the head, and then its
result is provisional (SR PARTIAL, the worklist's "incomplete"); the result on the grown
series names the earlier SR as its predecessor and is marked "updated" (issue 12). A site whose senders pause longer between
associations sets a longer settle time.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from apscheduler.schedulers.background import BackgroundScheduler

from node.dicom.eligibility import EligibilityRules, SeriesFacts
from node.outage import DatabaseOutage, is_unavailable
from storage.jobs import JobQueue
from storage.models import SeriesStatus, utcnow
from storage.series import SeriesIndex, SettledSeries

logger = logging.getLogger(__name__)

TRIAGE = "triage"


def series_lock(series_uid: str) -> str:
    """The queueing lock of a series' triage job: one queued job per series."""
    return f"series:{series_uid}"


class SeriesMonitor:
    def __init__(self, index: SeriesIndex, queue: JobQueue, rules: EligibilityRules, *,
                 settle_seconds: float, aborted_wait_seconds: float = 120.0) -> None:
        if settle_seconds < 0 or aborted_wait_seconds < 0:
            raise ValueError("settle_seconds and aborted_wait_seconds must be >= 0, got "
                             f"{settle_seconds} and {aborted_wait_seconds}")
        self.index = index
        self.queue = queue
        self.rules = rules
        self.settle = timedelta(seconds=settle_seconds)
        self.aborted_wait = timedelta(seconds=max(aborted_wait_seconds, settle_seconds))

    def run_once(self) -> dict[str, str]:
        """Decide every settled series; returns {series UID: 'queued' or the skip reason}.

        A series whose last transfer was aborted waits `aborted_wait_seconds` for the sender
        to send it again before it counts as complete. The decisions of one run are written
        in one transaction: many small studies (radiographs, one instance each) settle many
        series a second, and a transaction each (an fsync each, on SQLite) held the write lock
        the receiving processes need for every new series."""
        now = utcnow()
        settled = self.index.settled(now - self.settle, aborted_cutoff=now - self.aborted_wait)
        return self._decide([(series, self._reason_to_skip(series)) for series in settled])

    def complete_now(self, series_uid: str) -> str | None:
        """An operator's "complete this series now": decide a receiving series without
        waiting for it to settle (mercure's force-completion). None when it is not receiving
        or an instance arrived meanwhile; else 'queued' or the reason it is not triaged."""
        found = self.index.receiving(series_uid)
        if found is None:
            return None
        return self._decide([(found, self._reason_to_skip(found))]).get(found.series_uid)

    def _reason_to_skip(self, series: SettledSeries) -> tuple[str | None, int]:
        """Why the series is not triaged (None: it is), and its slices."""
        contents = self.index.contents(series.pk)
        facts = SeriesFacts(modality=contents.modality, body_part=contents.body_part,
                            sop_classes=contents.sop_classes, image_types=contents.image_types,
                            slices=contents.slices)
        return self.rules.reason_to_skip(facts), facts.slices

    def _decide(self, decisions: list[tuple[SettledSeries, tuple[str | None, int]]]
                ) -> dict[str, str]:
        """Write the decisions in one transaction, then log them. A series that received an
        instance since it was read is left out (it is decided when it settles again)."""
        if not decisions:
            return {}
        written: list[tuple[SettledSeries, str | None, int, bool]] = []
        with self.index.engine.begin() as conn:
            for series, (reason, slices) in decisions:
                if reason is not None:
                    if SeriesIndex.mark(conn, series, SeriesStatus.NOT_ELIGIBLE, reason):
                        written.append((series, reason, slices, False))
                elif SeriesIndex.mark(conn, series, SeriesStatus.QUEUED):
                    job = self.queue.enqueue(conn, kind=TRIAGE,
                                             queueing_lock=series_lock(series.series_uid),
                                             series_pk=series.pk, series_revision=series.revision)
                    written.append((series, None, slices, job is None))
        decided: dict[str, str] = {}
        for series, reason, slices, already in written:
            if reason is not None:
                logger.info("series %s stored, not triaged: %s", series.series_uid, reason)
                decided[series.series_uid] = reason
            else:
                logger.info("series %s complete (%d slices): queued for triage%s",
                            series.series_uid, slices, " (already queued)" if already else "")
                decided[series.series_uid] = "queued"
        return decided


class Polls:
    """Periodic work of the supervisor on APScheduler: each function every `interval`
    seconds, never two runs of one at once, and no warning when a run outlasts the interval.

    With max_instances=1, a run that takes longer than the interval (the first ones at start,
    a database busy for a moment) makes APScheduler skip the next tick and warn "maximum
    number of running instances reached", which an operator reads as trouble. Here a second
    instance is allowed, and returns at once when the previous run is still going: the tick
    is skipped without a word, as it should be.
    """

    def __init__(self, interval: float) -> None:
        if interval <= 0:
            raise ValueError(f"interval must be > 0, got {interval}")
        self.interval = interval
        self.scheduler = BackgroundScheduler(daemon=True)

    def add(self, func: Callable[[], Any], name: str) -> None:
        """Run `func` now (once started) and then every `interval` seconds."""
        busy = threading.Lock()
        outage = DatabaseOutage(logger, f"periodic {name}")

        def run() -> None:
            if not busy.acquire(blocking=False):
                return  # the previous run is still going
            try:
                func()
                outage.ok()
            except Exception as exc:  # logged; the next run comes all the same
                if is_unavailable(exc):
                    outage.failed(exc)  # said once, not a traceback per tick
                else:
                    logger.exception("periodic %s failed", name)
            finally:
                busy.release()

        self.scheduler.add_job(run, "interval", seconds=self.interval, id=name,
                               max_instances=2, coalesce=True, next_run_time=utcnow())

    def start(self) -> None:
        self.scheduler.start()

    def shutdown(self) -> None:
        """Stop: no new runs; waits for a run in progress."""
        if self.scheduler.running:
            self.scheduler.shutdown(wait=True)

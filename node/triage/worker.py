"""The triage worker: claims series jobs, runs the active model, writes the results.

For each job: the series' volume as `ml.volume` assembles it (localizers, repeats and other
planes left out and said; gaps and short coverage make the result provisional), its slices
decoded and converted to HU one instance at a time (a corrupt slice is left out and said), the
classifier, a DICOM SR stored in the node's
own store and queued for every destination, the result rows and the series status, in one
transaction with the job's completion.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Sequence

from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import dcmwrite
from sqlalchemy.exc import SQLAlchemyError

from ml.errors import MLError
from ml.inference import Classifier, SeriesPrediction
from ml.volume import PlaneKey, Volume, VolumeRules, assemble
from node.dicom.meta import meta_from_dataset
from node.outage import DatabaseOutage, is_unavailable
from node.series_warnings import once_per_series
from node.triage.reading import PixelsRead, SeriesHeaders, hounsfield, read_headers
from node.triage.registry import ActiveModel, ModelHolder, ModelUnavailableError
from node.triage.sr import AlgorithmInfo, LabelResult, build_triage_sr
from storage.errors import StorageError
from storage.files import FileStore
from storage.instances import InstanceStore, StoreResult
from storage.jobs import ClaimedJob, JobQueue
from storage.models import JobStatus, SeriesStatus, utcnow
from storage.outbox import Outbox
from storage.results import NewResult, Results, SeriesForTriage
from storage.worker_beats import BEAT_SECONDS, WorkerBeats

logger = logging.getLogger(__name__)

# A series whose slices are more than this share undecodable is not read at all.
MAX_SKIPPED_FRACTION = 0.1


class TriageError(Exception):
    """A job that cannot be done as asked; the message is shown in the worklist."""


class TriageWorker:
    def __init__(self, *, results: Results, queue: JobQueue, store: InstanceStore,
                 files: FileStore, outbox: Outbox, model: ModelHolder,
                 destinations: Sequence[str], min_slices: int, ae_title: str,
                 batch_size: int = 16, name: str | None = None,
                 volume_rules: VolumeRules | None = None, key_images: bool = False,
                 beats: WorkerBeats | None = None) -> None:
        self.results = results
        self.beats = beats  # this worker's heartbeat, for /healthz; None: none kept
        self._next_beat = 0.0
        self.key_images = key_images  # also send a Secondary Capture per finding
        self.ae_title = ae_title  # the node's own: the calling AE title its SRs are stored with
        self.queue = queue
        self.store = store
        self.files = files
        self.outbox = outbox
        self.model = model
        self.destinations = tuple(destinations)
        self.min_slices = min_slices
        self.volume_rules = volume_rules or VolumeRules(min_slices=min_slices)
        self.batch_size = batch_size
        self.name = name or f"{socket.gethostname()}:{os.getpid()}:{threading.get_ident()}"
        self._current: ClaimedJob | None = None  # the job in hand, for run()
        # SRs of results not recorded that could not be taken back yet (database away)
        self._not_taken_back: list[StoreResult] = []

    def run(self, stop: threading.Event, *, idle_wait: float = 0.2) -> None:
        """Take and process jobs until `stop` is set, saying that this worker is alive
        (storage.worker_beats) as it goes. While the database is unavailable (PostgreSQL
        restarting, say) the worker waits and tries again; a job the outage cut short is
        queued again, its try not counted, once the database is back."""
        try:
            self._work(stop, idle_wait)
        finally:
            if self.beats is not None:
                try:
                    self.beats.gone(self.name)
                except SQLAlchemyError as exc:
                    logger.warning("worker %s: heartbeat row not removed: %s", self.name, exc)

    def _work(self, stop: threading.Event, idle_wait: float) -> None:
        outage = DatabaseOutage(logger, f"triage worker {self.name}")
        cut_short: ClaimedJob | None = None
        while not stop.is_set():
            self._beat()
            try:
                if cut_short is not None or self._not_taken_back:
                    self._after_outage(cut_short)
                    cut_short = None
                took = self.run_once()
                outage.ok()
            except Exception as exc:
                if not is_unavailable(exc):
                    raise
                cut_short = cut_short or self._current
                outage.failed(exc)
                stop.wait(outage.wait_seconds())
                continue
            finally:
                self._current = None
            if not took:
                stop.wait(idle_wait)

    def _beat(self) -> None:
        """Say this worker is alive, at most every BEAT_SECONDS (storage.worker_beats)."""
        if self.beats is None or time.monotonic() < self._next_beat:
            return
        self._next_beat = time.monotonic() + BEAT_SECONDS
        try:
            self.beats.beat(self.name)
        except SQLAlchemyError as exc:  # the queue's own errors say more; keep working
            logger.warning("worker %s: heartbeat not written: %s", self.name, exc)

    def run_once(self) -> bool:
        """Process one job if one is runnable; True when a job was taken. An unavailable
        database (storage.db.is_unavailable) is raised, the job left to the caller
        (`self._current`)."""
        job = self.queue.claim(self.name)
        if job is None:
            return False
        self._current = job
        try:
            with self.queue.kept_alive(job):
                self.process(job)
        except Exception as exc:
            if is_unavailable(exc):
                raise
            self._failed(job, _reason(job, exc))
        return True

    def _after_outage(self, cut_short: ClaimedJob | None) -> None:
        """Once the database is back: take back the SRs of results not recorded, and queue
        the job the outage cut short again (JobQueue.release)."""
        while self._not_taken_back and self.store.take_back(self._not_taken_back[0]):
            self._not_taken_back.pop(0)
        job = cut_short
        reason = "the database became unavailable while the job ran"
        if job is not None and self.queue.release(job, reason) and job.series_pk is not None:
            self.results.set_series_status(job.series_pk, SeriesStatus.QUEUED,
                                           f"retrying: {reason}", revision=job.series_revision)

    def _failed(self, job: ClaimedJob, reason: str) -> None:
        final = self.queue.fail(job, reason)
        if job.series_pk is not None:
            status = SeriesStatus.FAILED if final == JobStatus.FAILED else SeriesStatus.QUEUED
            note = reason if final == JobStatus.FAILED else f"retrying: {reason}"
            self.results.set_series_status(job.series_pk, status, note, revision=job.series_revision)

    def process(self, job: ClaimedJob) -> None:
        if job.series_pk is None:
            raise TriageError("job names no series")
        self.results.set_series_status(job.series_pk, SeriesStatus.PROCESSING,
                                       revision=job.series_revision)
        series = self.results.series_for_triage(job.series_pk)
        with once_per_series(series.series_uid):
            self._triage(job, series)

    def _triage(self, job: ClaimedJob, series: SeriesForTriage) -> None:
        headers = read_headers(self.files, series.instances)
        volume = assemble(headers.planes, self.volume_rules, undecodable=headers.unreadable)
        if not volume.triageable:
            self._not_a_volume(job, series, volume)
            return
        active = self.model.get()  # the registry's active model, reloaded when it changed
        volume, read, prediction = self._predict(active.classifier, headers, volume)
        if len(read.skipped) > MAX_SKIPPED_FRACTION * len(headers.planes):
            first = next(iter(read.skipped.items()))
            raise TriageError(f"{len(read.skipped)} of {len(headers.planes)} slices unreadable: "
                              f"{first[0][0]}: {first[1]}")
        self.queue.heartbeat(job)
        self._report(job, series, headers, volume, active, prediction)

    def _predict(self, classifier: Classifier, headers: SeriesHeaders,
                 volume: Volume) -> tuple[Volume, PixelsRead, SeriesPrediction]:
        """Run the model on the volume; slices that fail to decode are left out, and the
        volume is measured again without them (a gap they leave is then a problem)."""
        skipped: dict[PlaneKey, str] = {}
        for _ in range(3):
            read = PixelsRead()
            prediction = classifier.predict_series(
                hounsfield(self.files, headers, volume, self.volume_rules, read),
                batch_size=self.batch_size, pixel_spacing=volume.pixel_spacing)
            skipped.update(read.skipped)
            final = assemble(headers.planes, self.volume_rules,
                             undecodable={**headers.unreadable, **skipped},
                             head_areas=read.head_areas, cavity_areas=read.cavity_areas)
            if [p.key for p in final.slices] == read.used:
                read.skipped = skipped
                return final, read, prediction
            volume = final  # an unread slice let an older duplicate take its place
        raise TriageError("the series' volume kept changing while its slices were read")

    def _not_a_volume(self, job: ClaimedJob, series: SeriesForTriage, volume: Volume) -> None:
        reason = "; ".join(volume.notes())
        with self.results.engine.begin() as conn:
            self.results.set_series_status(series.pk, SeriesStatus.NOT_ELIGIBLE, reason,
                                           revision=job.series_revision, conn=conn)
            if not self.queue.complete(job, conn):
                raise TriageError("lease lost while the job ran; another worker has it")
        logger.info("series %s not triaged: %s", series.series_uid, reason)

    def _report(self, job: ClaimedJob, series: SeriesForTriage, headers: SeriesHeaders,
                volume: Volume, active: ActiveModel, prediction: SeriesPrediction) -> None:
        entry = active.entry
        results = _label_results(active.classifier, prediction, volume)
        sr, notes = self._build_sr(series, headers, volume, active, results,
                                   held_back=prediction.held_back)
        stored = self.store.store(meta_from_dataset(sr, sr.file_meta.TransferSyntaxUID),
                                  [_encode(sr)], calling_ae=self.ae_title)
        # Last slice to result; none for a series read again unchanged (a requeue), whose
        # wait since its last slice says nothing of the node's speed (stats, metrics).
        latency = (None if self.results.read_before(series.pk, job.series_revision)
                   else (utcnow() - series.last_received_at).total_seconds())
        pks = {uid: instance.pk for uid, instance in headers.instances.items()}
        new = NewResult(
            series_pk=series.pk, job_pk=job.id, series_revision=job.series_revision,
            model_name=entry.name, model_version=entry.version, model_pk=entry.pk,
            probabilities={r.label: r.probability for r in results},
            calls={r.label: r.present for r in results},
            slices=[(pks[p.sop_instance_uid], p.frame_number - 1, prediction.per_slice[i].tolist())
                    for i, p in enumerate(volume.slices)],
            sr_sop_uid=str(sr.SOPInstanceUID), latency_seconds=latency,
            complete=volume.complete, notes="; ".join(notes),
            inference_seconds=prediction.model_seconds)
        try:
            with self.results.engine.begin() as conn:
                Results.add(conn, new)
                self.outbox.add(conn, sop_uid=str(sr.SOPInstanceUID),
                                file_path=stored.file_path, destinations=self.destinations)
                self.results.set_series_status(series.pk, SeriesStatus.DONE, "; ".join(notes),
                                               revision=job.series_revision, conn=conn)
                if not self.queue.complete(job, conn):
                    raise TriageError("lease lost while the job ran; another worker has it")
        except BaseException:
            # The SR of a result not recorded must not stay in the node's store beside the
            # one of the worker that has the job now (a viewer would find two reports).
            if not self.store.take_back(stored):
                self._not_taken_back.append(stored)  # tried again when the database is back
            raise
        positives = [r.label for r in results if r.present]
        logger.info("series %s triaged by %s %s %s: %s%s",
                    series.series_uid, entry.name, entry.version,
                    "again (unchanged since its last result)" if latency is None
                    else f"in {latency:.2f}s after its last slice",
                    ", ".join(positives) or "no hemorrhage",
                    "" if volume.complete else " (incomplete series)")
        if self.key_images and positives:
            self._send_key_images(headers, volume, active, prediction)

    def _send_key_images(self, headers: SeriesHeaders, volume: Volume, active: ActiveModel,
                         prediction: SeriesPrediction) -> None:
        """After the SR went out: the key image of each finding (node.triage.key_image),
        stored, kept out of triage and queued. A failure here is logged; the result stands."""
        from node.triage.key_image import key_images

        try:
            read = PixelsRead()
            slices = list(hounsfield(self.files, headers, volume, self.volume_rules, read))
            if read.skipped:
                raise TriageError(f"{len(read.skipped)} slices unreadable on the second read")
            sources = [headers.headers[p.sop_instance_uid] for p in volume.slices]
            for sc in key_images(active.classifier, slices, sources, prediction,
                                 manufacturer="ichtriage",
                                 model=f"{active.entry.name} {active.entry.version}"):
                stored = self.store.store(meta_from_dataset(sc, sc.file_meta.TransferSyntaxUID),
                                          [_encode(sc)], calling_ae=self.ae_title)
                with self.results.engine.begin() as conn:
                    self.results.set_series_status(stored.series_pk, SeriesStatus.NOT_ELIGIBLE,
                                                   "key image made by this node", conn=conn)
                    self.outbox.add(conn, sop_uid=str(sc.SOPInstanceUID),
                                    file_path=stored.file_path, destinations=self.destinations)
        except (TriageError, MLError, StorageError, OSError, ValueError) as exc:
            logger.warning("series %s: no key image: %s: %s", volume.slices[0].sop_instance_uid
                           if volume.slices else "?", type(exc).__name__, exc)

    def _build_sr(self, series: SeriesForTriage, headers: SeriesHeaders, volume: Volume,
                  active: ActiveModel, results: list[LabelResult], *,
                  held_back: tuple[str, ...] = ()) -> tuple[Dataset, list[str]]:
        """The SR of the result, and the notes kept with it (what the volume left out, what
        it supersedes, subtypes held back by `ml.inference.hierarchical_calls`). The
        algorithm is named as the registry names the model."""
        card = active.classifier.card
        algorithm = AlgorithmInfo(
            name=active.entry.name, version=active.entry.version,
            parameters={"architecture": card.architecture,
                        "weights_sha256": card.sha256[:12], "windows": ",".join(card.windows),
                        "input_size": str(card.input_size), "context": str(card.context)})
        notes = volume.notes() + _held_back_notes(results, held_back)
        earlier = self.results.earlier_report(series.pk)
        if earlier is not None:  # the series grew, or was read again: say what this replaces
            notes.append(f"supersedes the earlier report {earlier.SOPInstanceUID}")
        read_line = (f"{len(volume.slices)} of {len(headers.planes)} images of the series read, "
                     f"inferior to superior" + (f", {volume.spacing_mm:.1f} mm apart"
                                                if volume.spacing_mm else ""))
        used = _instances_in_order(volume)
        sr = build_triage_sr([headers.headers[uid] for uid in used], results, algorithm,
                             frames=_frames_used(volume), complete=volume.complete,
                             notes=[read_line, *notes],
                             completion_description=volume.problems[0] if volume.problems
                             else None,
                             previous_versions=[earlier] if earlier is not None else [])
        return sr, notes


# Failures of a job that are said in its reason without a traceback.
KNOWN_FAILURES = (TriageError, ModelUnavailableError, MLError, StorageError, OSError, ValueError)


def _reason(job: ClaimedJob, exc: Exception) -> str:
    """The reason a failed try is recorded with; an unexpected error is logged with its
    traceback first."""
    if isinstance(exc, KNOWN_FAILURES):
        return f"{type(exc).__name__}: {exc}"
    logger.error("job %s: unexpected error", job.id, exc_info=exc)
    return f"unexpected {type(exc).__name__}: {exc}"


def _instances_in_order(volume: Volume) -> list[str]:
    """SOP Instance UIDs of the volume's slices, each once, in slice order."""
    return list(dict.fromkeys(p.sop_instance_uid for p in volume.slices))


def _frames_used(volume: Volume) -> dict[str, list[int]]:
    """The frames of each multi-frame instance the volume holds, in slice order."""
    frames: dict[str, list[int]] = {}
    for plane in volume.slices:
        if plane.number_of_frames > 1:
            frames.setdefault(plane.sop_instance_uid, []).append(plane.frame_number)
    return frames


def _label_results(classifier: Classifier, prediction: SeriesPrediction,
                   volume: Volume) -> list[LabelResult]:
    """Per label, the model's result; a finding called present cites its key slice (by its
    index among the SR's source instances, and its frame for a multi-frame one)."""
    card = classifier.card
    used = _instances_in_order(volume)
    frames = _frames_used(volume)
    results = []
    for j, label in enumerate(card.labels):
        key = volume.slices[prediction.key_slices[label]]
        present = prediction.calls[label]
        results.append(LabelResult(
            label=label, probability=float(prediction.series[j]), present=present,
            threshold=float(card.thresholds[label]),
            key_slice=used.index(key.sop_instance_uid) if present else None,
            key_frame=key.frame_number if present and key.sop_instance_uid in frames
            else None))
    return results


def _held_back_notes(results: list[LabelResult], held_back: tuple[str, ...]) -> list[str]:
    """One note naming the subtypes above their thresholds that were not called."""
    if not held_back:
        return []
    by_label = {r.label: r for r in results}
    named = ", ".join(f"{label} {by_label[label].probability:.2f} (threshold "
                      f"{by_label[label].threshold:.2f})" for label in held_back)
    any_result = by_label["any"]
    return [f"not called, as any hemorrhage is below its threshold ({any_result.probability:.2f} "
            f"< {any_result.threshold:.2f}): {named}"]


def _encode(ds: Dataset) -> bytes:
    buffer = DicomBytesIO()
    dcmwrite(buffer, ds, enforce_file_format=True)
    return buffer.getvalue()


def start_workers(count: int, make: Callable[[int], TriageWorker],
                  stop: threading.Event) -> list[threading.Thread]:
    threads = []
    for i in range(count):
        worker = make(i)
        thread = threading.Thread(target=worker.run, args=(stop,), name=f"triage-worker-{i}",
                                  daemon=True)
        thread.start()
        threads.append(thread)
    return threads

"""The triage worker: claims series jobs, runs the active model, writes the results.

For each job: the series' slices in anatomical order, decoded and converted to HU one at a
time (a corrupt slice is skipped and counted), the classifier, a DICOM SR stored in the node's
own store and queued for every destination, the result rows and the series status, in one
transaction with the job's completion.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import dcmwrite

from ml.errors import MLError, SliceError
from ml.inference import Classifier
from ml.windowing import to_hounsfield
from node.dicom.meta import meta_from_dataset
from node.triage.sr import AlgorithmInfo, LabelResult, build_triage_sr
from storage.errors import StorageError
from storage.files import FileStore
from storage.instances import InstanceStore
from storage.jobs import ClaimedJob, JobQueue
from storage.models import JobStatus, SeriesStatus, utcnow
from storage.outbox import Outbox
from storage.results import NewResult, Results, SeriesInstance

logger = logging.getLogger(__name__)

# A series whose slices are more than this share undecodable is not read at all.
MAX_SKIPPED_FRACTION = 0.1


class TriageError(Exception):
    """A job that cannot be done as asked; the message is shown in the worklist."""


@dataclass
class ModelHolder:
    """The active model, loaded once and reloaded when its checkpoint file changes."""

    path: Path
    device: str = "auto"
    _loaded: Classifier | None = None
    _stamp: tuple[int, int] | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def get(self) -> Classifier:
        with self._lock:
            try:
                st = self.path.stat()
            except OSError as exc:
                raise TriageError(f"model checkpoint {self.path} unreadable: {exc}") from exc
            stamp = (st.st_mtime_ns, st.st_size)
            if self._loaded is None or stamp != self._stamp:
                self._loaded = Classifier.load(self.path, device=self.device)
                self._stamp = stamp
                logger.info("model %s %s loaded from %s", self._loaded.card.architecture,
                            self._loaded.card.sha256[:12], self.path)
            return self._loaded


@dataclass(frozen=True)
class Slice:
    instance: SeriesInstance
    frame: int


def slice_order(instances: Sequence[SeriesInstance]) -> list[SeriesInstance]:
    """Along the slice normal (ImagePositionPatient . (row x column)), else InstanceNumber."""
    positions = [_normal_position(i) for i in instances]
    if all(p is not None for p in positions) and len(set(positions)) == len(positions):
        pairs = sorted(zip(positions, range(len(instances)), strict=True))
        return [instances[i] for _, i in pairs]
    return sorted(instances, key=lambda i: (i.instance_number is None, i.instance_number or 0,
                                            i.sop_uid))


def _normal_position(instance: SeriesInstance) -> float | None:
    try:
        pos = np.array([float(v) for v in instance.image_position.split("\\")])
        ori = np.array([float(v) for v in instance.image_orientation.split("\\")])
    except ValueError:
        return None
    if pos.shape != (3,) or ori.shape != (6,):
        return None
    return float(np.dot(pos, np.cross(ori[:3], ori[3:])))


class TriageWorker:
    def __init__(self, *, results: Results, queue: JobQueue, store: InstanceStore,
                 files: FileStore, outbox: Outbox, model: ModelHolder,
                 destinations: Sequence[str], min_slices: int, ae_title: str,
                 batch_size: int = 16, name: str | None = None) -> None:
        self.results = results
        self.ae_title = ae_title  # the node's own: the calling AE title its SRs are stored with
        self.queue = queue
        self.store = store
        self.files = files
        self.outbox = outbox
        self.model = model
        self.destinations = tuple(destinations)
        self.min_slices = min_slices
        self.batch_size = batch_size
        self.name = name or f"{socket.gethostname()}:{os.getpid()}:{threading.get_ident()}"

    def run(self, stop: threading.Event, *, idle_wait: float = 0.2) -> None:
        while not stop.is_set():
            if not self.run_once():
                stop.wait(idle_wait)

    def run_once(self) -> bool:
        """Process one job if one is runnable; True when a job was taken."""
        job = self.queue.claim(self.name)
        if job is None:
            return False
        try:
            with self.queue.kept_alive(job):
                self.process(job)
        except (TriageError, MLError, StorageError, OSError, ValueError) as exc:
            self._failed(job, f"{type(exc).__name__}: {exc}")
        except Exception as exc:
            logger.exception("job %s: unexpected error", job.id)
            self._failed(job, f"unexpected {type(exc).__name__}: {exc}")
        return True

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
        ordered = slice_order(series.instances)
        self._check_geometry(ordered)
        classifier = self.model.get()
        slices: list[Slice] = []
        headers: dict[int, Dataset] = {}
        skipped: list[str] = []
        prediction = classifier.predict_series(
            self._hounsfield(ordered, slices, headers, skipped), batch_size=self.batch_size)
        total = sum(max(i.number_of_frames or 1, 1) for i in ordered)
        if len(skipped) > MAX_SKIPPED_FRACTION * total or len(slices) < self.min_slices:
            raise TriageError(f"{len(skipped)} of {total} slices unreadable: {skipped[0]}")
        self.queue.heartbeat(job)
        card = classifier.card
        results = [
            LabelResult(label=label, probability=float(prediction.series[j]),
                        present=prediction.calls[label], threshold=float(card.thresholds[label]),
                        key_slice=self._header_index(slices, prediction.key_slices[label],
                                                     headers))
            for j, label in enumerate(card.labels)
        ]
        source = list(headers.values())  # in slice order: filled as the slices were read
        algorithm = AlgorithmInfo(
            name=card.architecture, version=card.sha256[:12],
            parameters={"windows": ",".join(card.windows), "input_size": str(card.input_size),
                        "context": str(card.context),
                        **{f"threshold_{k}": f"{v:.4f}" for k, v in card.thresholds.items()}})
        sr = build_triage_sr(source, results, algorithm)
        stored = self.store.store(meta_from_dataset(sr, sr.file_meta.TransferSyntaxUID),
                                  [_encode(sr)], calling_ae=self.ae_title)
        latency = (utcnow() - series.last_received_at).total_seconds()
        new = NewResult(
            series_pk=series.pk, job_pk=job.id, series_revision=job.series_revision,
            model_name=card.architecture, model_version=card.sha256[:12],
            probabilities={r.label: r.probability for r in results},
            calls={r.label: r.present for r in results},
            slices=[(s.instance.pk, s.frame, prediction.per_slice[i].tolist())
                    for i, s in enumerate(slices)],
            sr_sop_uid=str(sr.SOPInstanceUID), latency_seconds=latency)
        with self.results.engine.begin() as conn:
            Results.add(conn, new)
            self.outbox.add(conn, sop_uid=str(sr.SOPInstanceUID), file_path=stored.file_path,
                            destinations=self.destinations)
            note = f"{len(skipped)} slice(s) skipped: {skipped[0]}" if skipped else ""
            self.results.set_series_status(series.pk, SeriesStatus.DONE, note,
                                           revision=job.series_revision, conn=conn)
            if not self.queue.complete(job, conn):
                raise TriageError("lease lost while the job ran; another worker has it")
        positives = [r.label for r in results if r.present]
        logger.info("series %s triaged by %s in %.2fs after its last slice: %s", series.series_uid,
                    card.architecture, latency, ", ".join(positives) or "no hemorrhage")

    @staticmethod
    def _check_geometry(ordered: Sequence[SeriesInstance]) -> None:
        sizes = {(i.rows, i.columns) for i in ordered}
        if len(sizes) > 1:
            raise TriageError(f"mixed image sizes in the series: {sorted(map(str, sizes))}")

    def _hounsfield(self, ordered: Sequence[SeriesInstance], slices: list[Slice],
                    headers: dict[int, Dataset], skipped: list[str]) -> Iterator[np.ndarray]:
        """HU frames in order, one file at a time; unreadable ones are noted and skipped."""
        for instance in ordered:
            path = self.files.path_of(instance.file_path)
            try:
                ds = dcmread(path)
                hu = to_hounsfield(ds)
            except (SliceError, InvalidDicomError, OSError, ValueError) as exc:
                skipped.append(f"{instance.sop_uid}: {exc}")
                logger.warning("slice %s skipped: %s", instance.sop_uid, exc)
                continue
            del ds.PixelData  # keep only the header for the report
            headers[instance.pk] = ds
            for frame in range(hu.shape[0]):
                slices.append(Slice(instance, frame))
                yield hu[frame]

    @staticmethod
    def _header_index(slices: Sequence[Slice], index: int, headers: dict[int, Dataset]) -> int:
        return list(headers).index(slices[index].instance.pk)


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

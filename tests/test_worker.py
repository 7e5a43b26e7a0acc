"""The triage worker in-process, on SQLite and PostgreSQL, with a small random-weight model."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest
import torch
from pydicom import dcmread
from pydicom.uid import generate_uid
from sqlalchemy import Connection, Engine, select

from ml.checkpoint import ModelCard, save_checkpoint
from ml.labels import LABELS
from ml.models import build_model
from ml.phantom import write_series
from node.dicom.eligibility import EligibilityRules
from node.dicom.meta import meta_from_dataset
from node.scheduler import SeriesMonitor
from node.triage.registry import ModelHolder, import_checkpoint
from node.triage.sr import read_triage_sr
from node.triage.worker import TriageWorker
from storage.files import FileStore
from storage.instances import InstanceStore
from storage.jobs import ClaimedJob, JobQueue
from storage.models import (
    Delivery,
    Instance,
    Job,
    Series,
    SlicePrediction,
    TriageResult,
    WorkerBeat,
)
from storage.outbox import Outbox
from storage.registry import ModelRegistry
from storage.results import Results
from storage.retry import RetryPolicy
from storage.series import SeriesIndex
from storage.worklist import worklist

SR_CLASS = "1.2.840.10008.5.1.4.1.1.88.34"  # Comprehensive 3D SR


def _tiny_model(folder: Path, thresholds: dict[str, float]) -> Path:
    torch.manual_seed(0)
    card = ModelCard.new("ichnet_seq", windows=("brain", "subdural", "bone"), input_size=32,
                         thresholds=thresholds, training_data="random weights; unit test")
    model = build_model("ichnet_seq", in_channels=card.in_channels, input_size=32)
    path = folder / "tiny.pt"
    save_checkpoint(path, model, card)
    return path


@pytest.fixture(scope="module")
def model_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _tiny_model(tmp_path_factory.mktemp("model"),
                       {name: (0.0 if name == "any" else 1.0) for name in LABELS})


class Node:
    def __init__(self, engine: Engine, root: Path, model_file: Path) -> None:
        self.engine = engine
        self.files = FileStore(root / "data")
        self.store = InstanceStore(engine, self.files)
        self.queue = JobQueue(engine, retry=RetryPolicy(max_attempts=2, backoff_seconds=0))
        self.registry = ModelRegistry(engine, root / "models")
        self.entry = import_checkpoint(self.registry, model_file, name="tiny", actor="test",
                                       activate=True)
        self.monitor = SeriesMonitor(SeriesIndex(engine), self.queue,
                                     EligibilityRules(min_slices=4), settle_seconds=0)
        self.worker = TriageWorker(
            results=Results(engine), queue=self.queue, store=self.store, files=self.files,
            outbox=Outbox(engine), model=ModelHolder(self.registry, device="cpu"),
            destinations=["PACS@127.0.0.1:104"], min_slices=4, ae_title="NODE1",
            batch_size=4, name="test")

    def receive(self, paths: list[Path]) -> None:
        for path in paths:
            ds = dcmread(path, stop_before_pixels=True)
            self.store.store(meta_from_dataset(ds, ds.file_meta.TransferSyntaxUID),
                             [path.read_bytes()])

    def rows(self, model: type, *columns: object) -> list[tuple[object, ...]]:
        with self.engine.connect() as conn:
            return [tuple(r) for r in conn.execute(select(*columns).select_from(model)).all()]


@pytest.fixture
def node(engine: Engine, tmp_path: Path, model_file: Path) -> Node:
    return Node(engine, tmp_path, model_file)


def test_a_series_is_triaged_reported_and_queued_for_sending(node: Node, tmp_path: Path) -> None:
    series = write_series(tmp_path / "in", seed=3, slices=8, size=64, subtypes=("subdural",))
    node.receive(list(reversed(series.paths)))  # arrival order must not matter
    assert node.monitor.run_once() == {series.series_uid: "queued"}
    assert node.worker.run_once()
    assert not node.worker.run_once()  # nothing else to do

    (result,) = node.rows(TriageResult, TriageResult.probabilities, TriageResult.calls,
                          TriageResult.sr_sop_uid, TriageResult.slices,
                          TriageResult.model_name)
    probabilities, calls = json.loads(str(result[0])), json.loads(str(result[1]))
    assert list(probabilities) == list(LABELS)
    assert calls["any"] is True and calls["subdural"] is False  # the test model's thresholds
    assert result[3] == 8 and result[4] == "tiny"  # the registry's name of the model
    assert node.rows(TriageResult, TriageResult.complete, TriageResult.notes) == [(True, "")]
    ((model_seconds,),) = node.rows(TriageResult, TriageResult.inference_seconds)
    assert isinstance(model_seconds, float) and model_seconds > 0  # the model's own time
    # per-slice rows in anatomical order, pointing at the right instances
    per_slice = node.rows(SlicePrediction, SlicePrediction.position)
    assert len(per_slice) == 8
    with node.engine.connect() as conn:
        ordered = conn.execute(
            select(Instance.sop_uid).join(SlicePrediction, SlicePrediction.instance_pk == Instance.id)
            .order_by(SlicePrediction.position)).scalars().all()
    assert ordered == list(series.sop_uids)
    assert (series.series_uid, "done") in node.rows(Series, Series.series_uid, Series.status)
    assert node.rows(Job, Job.status) == [("done",)]
    # the SR is in the node's own store, indexed, and in the outbox
    sr_uid = str(result[2])
    (sr_row,) = [r for r in node.rows(Instance, Instance.sop_uid, Instance.sop_class_uid,
                                      Instance.file_path, Instance.calling_ae)
                 if r[0] == sr_uid]
    assert sr_row[1] == SR_CLASS
    assert sr_row[3] == "NODE1"  # stored under the node's configured AE title
    sr = dcmread(node.files.path_of(str(sr_row[2])))
    assert sr.StudyInstanceUID == series.study_uid
    read = read_triage_sr(sr)
    assert read["any"] == (round(probabilities["any"], 4), True)  # four decimals in the SR
    assert node.rows(Delivery, Delivery.sop_uid, Delivery.destination, Delivery.status) == [
        (sr_uid, "PACS@127.0.0.1:104", "pending")]
    # the SR's own series is stored, and the scheduler does not triage it
    decided = node.monitor.run_once()
    assert list(decided.values()) == ["modality SR is not CT"]


def test_a_corrupt_slice_is_skipped_and_noted(node: Node, tmp_path: Path) -> None:
    series = write_series(tmp_path / "in", seed=4, slices=12, size=64)
    broken = series.paths[5]
    broken.write_bytes(broken.read_bytes()[:-3000])  # pixel data cut short
    node.receive(list(series.paths))
    node.monitor.run_once()
    assert node.worker.run_once()
    with node.engine.connect() as conn:
        status, reason = conn.execute(select(Series.status, Series.status_reason)
                                      .where(Series.series_uid == series.series_uid)).one()
    assert status == "done" and "1 undecodable image(s) left out" in str(reason)
    assert "1 slice(s) could not be read" in str(reason)
    assert node.rows(TriageResult, TriageResult.slices, TriageResult.complete) == [(11, False)]


def test_a_minority_of_another_size_is_left_out_and_said(node: Node, tmp_path: Path) -> None:
    series = write_series(tmp_path / "a", seed=5, slices=6, size=64)
    other = write_series(tmp_path / "b", seed=5, slices=6, size=96, study_uid=series.study_uid)
    node.receive(list(series.paths))
    # two slices of another size under the same series UID
    for path in other.paths[2:4]:
        ds = dcmread(path)
        ds.SeriesInstanceUID = series.series_uid
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.save_as(path, enforce_file_format=True)
        node.receive([path])
    node.monitor.run_once()
    assert node.worker.run_once()
    with node.engine.connect() as conn:
        status, reason = conn.execute(select(Series.status, Series.status_reason)
                                      .where(Series.series_uid == series.series_uid)).one()
    assert status == "done" and "2 other matrix image(s) left out" in reason
    assert node.rows(TriageResult, TriageResult.slices, TriageResult.complete) == [(6, True)]


def test_a_series_without_enough_usable_slices_is_not_eligible(node: Node, tmp_path: Path
                                                               ) -> None:
    series = write_series(tmp_path / "a", seed=6, slices=6, size=32)
    for path in series.paths[:3]:  # half of it is marked as localizers
        ds = dcmread(path)
        ds.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
        ds.save_as(path, enforce_file_format=True)
    node.receive(list(series.paths))
    assert node.monitor.run_once() == {series.series_uid: "queued"}
    assert node.worker.run_once()
    with node.engine.connect() as conn:
        status, reason = conn.execute(select(Series.status, Series.status_reason)
                                      .where(Series.series_uid == series.series_uid)).one()
    assert status == "not_eligible"
    assert reason.startswith("3 localizer image(s) left out; 3 usable slice(s), fewer than 4")
    assert node.rows(Job, Job.status) == [("done",)]
    assert node.rows(TriageResult, TriageResult.id) == []


def test_a_series_that_grows_gets_a_result_that_supersedes_the_first(node: Node,
                                                                     tmp_path: Path) -> None:
    """Issue 12 row 7: the first half triaged, then the rest arrives."""
    series = write_series(tmp_path / "in", seed=7, slices=16, size=32)
    node.receive(list(series.paths[:8]))
    node.monitor.run_once()
    assert node.worker.run_once()
    node.receive(list(series.paths[8:]))
    assert node.monitor.run_once()[series.series_uid] == "queued"
    assert node.worker.run_once()
    with node.engine.connect() as conn:
        results = conn.execute(select(TriageResult.sr_sop_uid, TriageResult.slices,
                                      TriageResult.complete, TriageResult.notes)
                               .order_by(TriageResult.id)).all()
        paths = dict(conn.execute(select(Instance.sop_uid, Instance.file_path)).all())
    (first, first_n, first_complete, _), (second, second_n, second_complete, notes) = results
    assert (first_n, first_complete) == (8, False)  # half a head: provisional
    assert (second_n, second_complete) == (16, True)
    assert f"supersedes the earlier report {first}" in notes
    sr = dcmread(node.files.path_of(paths[second]))
    [study] = sr.PredecessorDocumentsSequence
    [sr_series] = study.ReferencedSeriesSequence
    [item] = sr_series.ReferencedSOPSequence
    assert item.ReferencedSOPInstanceUID == first and item.ReferencedSOPClassUID == SR_CLASS
    assert "PredecessorDocumentsSequence" not in dcmread(node.files.path_of(paths[first]))
    (entry,) = worklist(node.engine)
    assert entry.updated and entry.complete and "supersedes" in entry.reason


def test_an_unreadable_repeat_gives_its_place_to_the_earlier_image(node: Node,
                                                                   tmp_path: Path) -> None:
    series = write_series(tmp_path / "in", seed=8, slices=12, size=64)  # 1 of 13 unread: < 10%
    ds = dcmread(series.paths[3])
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.AcquisitionNumber = 2
    repeat = tmp_path / "repeat.dcm"
    ds.save_as(repeat, enforce_file_format=True)
    repeat.write_bytes(repeat.read_bytes()[:-3000])  # its pixel data cut short
    node.receive([*series.paths, repeat])
    node.monitor.run_once()
    assert node.worker.run_once()
    with node.engine.connect() as conn:
        used = conn.execute(
            select(Instance.sop_uid).join(SlicePrediction, SlicePrediction.instance_pk == Instance.id)
            .order_by(SlicePrediction.position)).scalars().all()
        complete, notes = conn.execute(select(TriageResult.complete, TriageResult.notes)).one()
    assert used == list(series.sop_uids)
    assert complete is True and "1 undecodable image(s) left out" in notes


def test_a_stored_file_whose_header_cannot_be_read_makes_the_result_provisional(
        node: Node, tmp_path: Path) -> None:
    series = write_series(tmp_path / "in", seed=9, slices=12, size=64)
    node.receive(list(series.paths))
    with node.engine.connect() as conn:
        path = conn.execute(select(Instance.file_path)
                            .where(Instance.sop_uid == series.sop_uids[6])).scalar_one()
    node.files.path_of(path).write_bytes(b"\0" * 128 + b"DICM" + b"\xff" * 64)  # damaged
    node.monitor.run_once()
    assert node.worker.run_once()
    with node.engine.connect() as conn:
        complete, notes, slices = conn.execute(
            select(TriageResult.complete, TriageResult.notes, TriageResult.slices)).one()
    assert (complete, slices) == (False, 11)
    assert "1 undecodable image(s) left out" in notes
    assert "1 slice(s) could not be read" in notes


def test_a_running_worker_beats_and_says_when_it_stops(node: Node) -> None:
    from storage.worker_beats import WorkerBeats

    beats = WorkerBeats(node.engine)
    node.worker.beats = beats
    stop = threading.Event()
    thread = threading.Thread(target=node.worker.run, args=(stop,), kwargs={"idle_wait": 0.05})
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not beats.liveness().alive and time.monotonic() < deadline:
            time.sleep(0.05)
        assert beats.liveness().beating == 1
        with node.engine.connect() as conn:
            assert conn.execute(select(WorkerBeat.worker)).scalars().all() == ["test"]
    finally:
        stop.set()
        thread.join(timeout=30)
    assert not thread.is_alive() and not beats.liveness().alive  # its row is gone


class LeaseLost(JobQueue):
    """A queue whose jobs are lost by the time their result is recorded, as when a loaded
    host's worker misses its lease renewals and another worker takes the job over."""

    def complete(self, job: ClaimedJob, conn: Connection | None = None) -> bool:
        return False


def test_a_worker_that_lost_its_lease_leaves_no_report_behind(node: Node, tmp_path: Path
                                                                ) -> None:
    node.worker.queue = LeaseLost(node.engine)
    series = write_series(tmp_path / "in", seed=5, slices=8, size=64)
    node.receive(list(series.paths))
    assert node.monitor.run_once() == {series.series_uid: "queued"}
    assert node.worker.run_once()
    assert node.rows(TriageResult, TriageResult.id) == []
    assert node.rows(Delivery, Delivery.id) == []
    assert [r for r in node.rows(Instance, Instance.sop_class_uid) if r[0] == SR_CLASS] == []
    assert len(list((tmp_path / "data").rglob("*.dcm"))) == len(series.paths)
    (error,) = node.rows(Job, Job.last_error)
    assert "lease lost" in str(error[0])


def test_a_database_outage_mid_job_queues_the_job_again_uncounted(node: Node, tmp_path: Path
                                                                  ) -> None:
    series = write_series(tmp_path / "in", seed=6, slices=8, size=64)
    node.receive(list(series.paths))
    assert node.monitor.run_once() == {series.series_uid: "queued"}
    job = node.queue.claim("test")
    assert job is not None and job.attempts == 1
    assert node.queue.release(job, "the database went away")
    assert node.rows(Job, Job.status, Job.attempts, Job.last_error) == [
        ("queued", 0, "the database went away")]
    assert not node.queue.release(job, "twice")  # no longer this worker's
    assert node.worker.run_once()
    assert node.rows(Job, Job.status, Job.attempts) == [("done", 1)]


def test_a_subtype_without_any_is_held_back_and_said(engine: Engine, tmp_path: Path) -> None:
    # `any` can never reach its threshold, every subtype always reaches its own: the report
    # must not say "no hemorrhage" and "subdural hemorrhage" together.
    model = _tiny_model(tmp_path, {name: (1.0 if name == "any" else 0.0) for name in LABELS})
    node = Node(engine, tmp_path, model)
    series = write_series(tmp_path / "in", seed=3, slices=8, size=64, subtypes=("subdural",))
    node.receive(series.paths)
    node.monitor.run_once()
    assert node.worker.run_once()
    ((calls, notes, positive, sr_uid),) = node.rows(
        TriageResult, TriageResult.calls, TriageResult.notes, TriageResult.positive,
        TriageResult.sr_sop_uid)
    assert json.loads(str(calls)) == {name: False for name in LABELS}
    assert positive is False
    assert "not called, as any hemorrhage is below its threshold" in str(notes)
    assert all(f"{name} " in str(notes) for name in LABELS[1:])  # each held-back subtype named
    ((path,),) = [(r[1],) for r in node.rows(Instance, Instance.sop_uid, Instance.file_path)
                  if r[0] == sr_uid]
    read = read_triage_sr(dcmread(node.files.path_of(str(path))))
    assert not any(present for _, present in read.values())
    assert [e.priority for e in worklist(node.engine)] == ["routine"]

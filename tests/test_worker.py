"""The triage worker in-process, on SQLite and PostgreSQL, with a small random-weight model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from pydicom import dcmread
from pydicom.uid import generate_uid
from sqlalchemy import Engine, select

from ml.checkpoint import ModelCard, save_checkpoint
from ml.labels import LABELS
from ml.models import build_model
from ml.phantom import write_series
from node.dicom.eligibility import EligibilityRules
from node.dicom.meta import meta_from_dataset
from node.scheduler import SeriesMonitor
from node.triage.sr import read_triage_sr
from node.triage.worker import ModelHolder, TriageWorker, slice_order
from storage.files import FileStore
from storage.instances import InstanceStore
from storage.jobs import JobQueue
from storage.models import Delivery, Instance, Job, Series, SlicePrediction, TriageResult
from storage.outbox import Outbox
from storage.results import Results, SeriesInstance
from storage.retry import RetryPolicy
from storage.series import SeriesIndex

SR_CLASS = "1.2.840.10008.5.1.4.1.1.88.34"  # Comprehensive 3D SR


@pytest.fixture(scope="module")
def model_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    thresholds = {name: (0.0 if name == "any" else 1.0) for name in LABELS}
    card = ModelCard.new("ichnet_seq", windows=("brain", "subdural", "bone"), input_size=32,
                         thresholds=thresholds, training_data="random weights; unit test")
    model = build_model("ichnet_seq", in_channels=card.in_channels, input_size=32)
    path = tmp_path_factory.mktemp("model") / "tiny.pt"
    save_checkpoint(path, model, card)
    return path


class Node:
    def __init__(self, engine: Engine, root: Path, model_file: Path) -> None:
        self.engine = engine
        self.files = FileStore(root / "data")
        self.store = InstanceStore(engine, self.files)
        self.queue = JobQueue(engine, retry=RetryPolicy(max_attempts=2, backoff_seconds=0))
        self.monitor = SeriesMonitor(SeriesIndex(engine), self.queue,
                                     EligibilityRules(min_slices=4), settle_seconds=0)
        self.worker = TriageWorker(
            results=Results(engine), queue=self.queue, store=self.store, files=self.files,
            outbox=Outbox(engine), model=ModelHolder(model_file, device="cpu"),
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
    assert result[3] == 8 and result[4] == "ichnet_seq"
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
    assert read["any"] == pytest.approx((probabilities["any"], True), abs=1e-6)
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
    assert status == "done" and "1 slice(s) skipped" in str(reason)
    assert node.rows(TriageResult, TriageResult.slices) == [(11,)]


def test_mixed_sizes_retry_then_fail_with_reason(node: Node, tmp_path: Path) -> None:
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
    assert node.worker.run_once()  # first try fails, queued again (no backoff in this test)
    assert node.worker.run_once()  # second try fails for good
    with node.engine.connect() as conn:
        status, reason = conn.execute(select(Series.status, Series.status_reason)
                                      .where(Series.series_uid == series.series_uid)).one()
        job = conn.execute(select(Job.status, Job.attempts, Job.last_error)
                           .where(Job.queueing_lock == f"series:{series.series_uid}")).one()
    assert status == "failed" and "mixed image sizes" in reason
    assert job[0] == "failed" and job[1] == 2 and "mixed image sizes" in job[2]


def test_slice_order_follows_the_normal_then_instance_number() -> None:
    def inst(pk: int, z: float | None, number: int) -> SeriesInstance:
        position = "" if z is None else f"0\\0\\{z}"
        return SeriesInstance(pk, f"1.{pk}", "", number, position, "1\\0\\0\\0\\1\\0", 8, 8, None)

    assert [i.pk for i in slice_order([inst(1, 10, 1), inst(2, -5, 2), inst(3, 0, 3)])] == [2, 3, 1]
    # feet-first orientation flips the normal: order follows the normal, not raw z
    flipped = [SeriesInstance(i, f"1.{i}", "", i, f"0\\0\\{z}", "-1\\0\\0\\0\\1\\0", 8, 8, None)
               for i, z in ((1, 0.0), (2, 5.0))]
    assert [i.pk for i in slice_order(flipped)] == [2, 1]
    assert [i.pk for i in slice_order([inst(1, None, 3), inst(2, None, 1)])] == [2, 1]
    assert np.isfinite(0.0)

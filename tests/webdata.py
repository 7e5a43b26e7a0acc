"""Studies for the HTTP tests: real DICOM files in a real file store and index, results
written as the worker writes them (storage.results)."""

from __future__ import annotations

import io
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import numpy as np
from pydicom import Dataset, dcmwrite
from pydicom.uid import ExplicitVRLittleEndian
from sqlalchemy import Engine, select, update

from ml.labels import LABELS
from node.dicom.meta import meta_from_dataset
from storage.files import FileStore
from storage.instances import InstanceStore
from storage.models import Instance, Series, SeriesStatus
from storage.results import NewResult, Results
from tests.factories import ct_series


@dataclass(frozen=True)
class StudyRef:
    study_uid: str
    series_uid: str
    series_pk: int
    instance_pks: list[int]
    result_pk: int | None


def add_study(engine: Engine, files: FileStore, n: int, *, slices: int = 4,
              p_any: float | None = None, findings: tuple[str, ...] = (),
              complete: bool = True, study_date: str = "20261126",
              arrived: datetime | None = None, patient_name: str = "SECRET^NAME",
              with_sr: bool = False) -> StudyRef:
    """Study `n` (UIDs 1.2.826.0.1.<n>...), 32x32 slices whose pixel `i` rows are brighter per
    slice; with `p_any`, a result: positive on `findings` (and any), slice k most probable;
    `with_sr`: its SR made by node.triage.sr and stored, as the worker does."""
    datasets = ct_series(slices, study_uid=f"1.2.826.0.1.{n}", series_uid=f"1.2.826.0.1.{n}.1",
                         patient_name=patient_name, patient_id=f"PID-{n}")
    store = InstanceStore(engine, files)
    for i, ds in enumerate(datasets):
        ds.StudyDate = study_date
        ds.AccessionNumber = f"ACC{n}"
        pixels = np.full((32, 32), 1024 + 40, np.int16)
        pixels[: 2 + i] = 1024 + 1000  # bone-bright rows: slice i differs from the others
        ds.PixelData = pixels.tobytes()
        out = io.BytesIO()
        dcmwrite(out, ds, enforce_file_format=True)
        store.store(meta_from_dataset(ds, ExplicitVRLittleEndian), [out.getvalue()])
    with engine.begin() as conn:
        series_pk = int(conn.execute(select(Series.id).where(
            Series.series_uid == f"1.2.826.0.1.{n}.1")).scalar_one())
        instance_pks = [int(pk) for pk in conn.execute(
            select(Instance.id).where(Instance.series_pk == series_pk)
            .order_by(Instance.instance_number)).scalars()]
        if arrived is not None:
            conn.execute(update(Series).where(Series.id == series_pk).values(
                first_received_at=arrived, last_received_at=arrived + timedelta(seconds=5)))
    result_pk = None
    if p_any is not None:
        positive = bool(findings)
        probs = dict.fromkeys(LABELS, 0.02) | {"any": p_any} | dict.fromkeys(findings, p_any)
        calls = {label: label in findings or (label == "any" and positive) for label in LABELS}
        curve = [(pk, 0, [p_any * (0.5 if k != slices // 2 else 1.0)] * len(LABELS))
                 for k, pk in enumerate(instance_pks)]
        sr_uid = _store_sr(store, datasets, probs, calls, slices // 2) if with_sr else ""
        with engine.begin() as conn:
            result_pk = Results.add(conn, NewResult(
                series_pk, None, 1, "ichnet_seq", "v1test", probs, calls, curve, sr_uid,
                2.5, complete=complete, notes="" if complete else "gap of 20 mm",
                inference_seconds=0.04))
        Results(engine).set_series_status(series_pk, SeriesStatus.DONE)
    return StudyRef(f"1.2.826.0.1.{n}", f"1.2.826.0.1.{n}.1", series_pk, instance_pks, result_pk)


def _store_sr(store: InstanceStore, source: list[Dataset], probs: dict[str, float],
              calls: dict[str, bool], key: int) -> str:
    from node.triage.sr import AlgorithmInfo, LabelResult, build_triage_sr

    results = [LabelResult(label, probs[label], calls[label], 0.5,
                           key if calls[label] else None) for label in LABELS]
    sr = build_triage_sr(source, results, AlgorithmInfo("ichnet_seq", "v1test",
                                                        {"architecture": "ichnet_seq"}))
    out = io.BytesIO()
    dcmwrite(out, sr, enforce_file_format=True)
    store.store(meta_from_dataset(sr, sr.file_meta.TransferSyntaxUID), [out.getvalue()])
    return str(sr.SOPInstanceUID)


def hours_ago(h: float) -> datetime:
    return datetime.now(UTC) - timedelta(hours=h)

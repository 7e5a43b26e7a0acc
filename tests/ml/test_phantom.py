"""Synthetic head CT: anatomy, lesions and labels, and the DICOM files written."""

from __future__ import annotations

import csv
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import (
    CTImageStorage,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    RLELossless,
)

from ml.labels import LABELS, SUBTYPES
from ml.phantom import FIELD_OF_VIEW_MM, make_volume, write_dataset, write_series
from ml.rsna import read_labels
from ml.windowing import load_slice

SIZE = 128


def volume(
    seed: int, subtypes: tuple[str, ...] = (), *, slices: int = 16, size: int = SIZE
) -> tuple[np.ndarray, np.ndarray]:
    return make_volume(np.random.default_rng(seed), slices=slices, size=size, subtypes=subtypes)


def test_volume_shape_and_determinism() -> None:
    hu, labels = volume(7, ("subdural",))
    assert hu.shape == (16, SIZE, SIZE) and hu.dtype == np.int16
    assert labels.shape == (16, 6) and labels.dtype == np.uint8
    again, again_labels = volume(7, ("subdural",))
    np.testing.assert_array_equal(hu, again)
    np.testing.assert_array_equal(labels, again_labels)
    assert not np.array_equal(hu, volume(8, ("subdural",))[0])


def test_normal_head_anatomy() -> None:
    hu, labels = volume(3, slices=12)
    assert labels.sum() == 0
    assert hu.min() >= -1024 and hu.max() <= 3071
    assert abs(float(hu[:, :4, :4].mean()) + 1000) < 10  # air in the corners
    middle = hu[6]
    assert np.count_nonzero(middle > 700) > 0.02 * middle.size  # a skull
    centre = middle[SIZE // 2 - 12 : SIZE // 2 + 12, SIZE // 2 - 12 : SIZE // 2 + 12]
    brainish = centre[(centre > 0) & (centre < 60)]
    assert brainish.size > 0.8 * centre.size  # brain and CSF
    noise = np.std(hu[:, :6, :6])
    assert 1 < noise < 10


def test_subdural_only_labels() -> None:
    _, labels = volume(11, ("subdural",), slices=24)
    sub, epi = LABELS.index("subdural"), LABELS.index("epidural")
    assert labels[:, sub].sum() >= 2
    assert labels[:, epi].sum() == 0
    assert labels[:, [2, 3, 4]].sum() == 0
    np.testing.assert_array_equal(labels[:, 0], labels[:, 1:].max(axis=1))
    assert labels[0, sub] == 0  # not down in the skull base


def test_several_lesions_at_once() -> None:
    _, labels = volume(5, ("epidural", "intraventricular"), slices=24)
    assert labels[:, LABELS.index("epidural")].any()
    assert labels[:, LABELS.index("intraventricular")].any()
    assert not labels[:, LABELS.index("subarachnoid")].any()


@pytest.mark.parametrize("subtype", SUBTYPES)
def test_lesions_are_acute_blood_where_labelled(subtype: str) -> None:
    # The same generator state draws the same head and noise, so the lesion is the difference.
    for seed in (0, 1):
        normal, _ = volume(seed, size=256, slices=12)
        sick, labels = volume(seed, (subtype,), size=256, slices=12)
        changed = (sick.astype(np.int32) - normal > 15) & (normal < 60)  # blood over brain or CSF
        inner = changed.copy()  # away from the edges the scanner blur mixes with neighbours
        inner[:, 1:-1, 1:-1] &= (
            changed[:, :-2, 1:-1]
            & changed[:, 2:, 1:-1]
            & changed[:, 1:-1, :-2]
            & changed[:, 1:-1, 2:]
        )
        assert inner.sum() > 50
        assert 50 <= float(sick[inner].mean()) <= 90
        visible = changed.sum(axis=(1, 2)) > 0
        column = LABELS.index(subtype)
        assert labels[:, column].any()
        assert not (labels[:, column].astype(bool) & ~visible).any()  # labelled only where drawn


def test_unknown_subtype_is_rejected() -> None:
    with pytest.raises(ValueError, match="stroke"):
        volume(0, ("stroke",))


# --- DICOM ---------------------------------------------------------------------------------------


def test_series_files_are_deterministic(tmp_path: Path) -> None:
    a = write_series(tmp_path / "a", seed=42, slices=3, size=64, subtypes=("epidural",))
    b = write_series(tmp_path / "b", seed=42, slices=3, size=64, subtypes=("epidural",))
    assert a.study_uid == b.study_uid and a.sop_uids == b.sop_uids
    assert [p.read_bytes() for p in a.paths] == [p.read_bytes() for p in b.paths]
    c = write_series(tmp_path / "c", seed=43, slices=3, size=64)
    assert c.study_uid != a.study_uid and not set(c.sop_uids) & set(a.sop_uids)


def test_series_attributes(tmp_path: Path) -> None:
    series = write_series(tmp_path, seed=9, slices=4, size=64, patient_id="P-9")
    assert [p.name for p in series.paths] == ["1.dcm", "2.dcm", "3.dcm", "4.dcm"]
    headers = [pydicom.dcmread(p) for p in series.paths]
    first = headers[0]
    assert first.SOPClassUID == CTImageStorage
    assert first.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert first.Modality == "CT" and first.BodyPartExamined == "HEAD"
    assert list(first.ImageType) == ["ORIGINAL", "PRIMARY", "AXIAL"]
    assert first.PatientID == "P-9" and str(first.PatientName) == "PHANTOM^0009"
    assert first.StudyInstanceUID == series.study_uid
    assert first.SeriesInstanceUID == series.series_uid
    assert [float(v) for v in first.ImageOrientationPatient] == [1, 0, 0, 0, 1, 0]
    assert float(first.PixelSpacing[0]) == pytest.approx(FIELD_OF_VIEW_MM / 64)
    assert float(first.RescaleIntercept) == -1024 and float(first.RescaleSlope) == 1
    assert first.BitsAllocated == 16 and first.BitsStored in (12, 16)
    z = [float(h.ImagePositionPatient[2]) for h in headers]
    assert all(b > a for a, b in zip(z, z[1:], strict=False))  # inferior -> superior
    assert [h.InstanceNumber for h in headers] == [1, 2, 3, 4]
    assert [h.SOPInstanceUID for h in headers] == list(series.sop_uids)
    assert len({h.FrameOfReferenceUID for h in headers}) == 1


def test_rsna_style_file_names(tmp_path: Path) -> None:
    series = write_series(tmp_path, seed=1, slices=2, size=64, image_ids=True)
    assert all(re.fullmatch(r"ID_[0-9a-f]{9}\.dcm", p.name) for p in series.paths)


SYNTAXES = [RLELossless, JPEGLSLossless, JPEG2000Lossless, DeflatedExplicitVRLittleEndian]


@pytest.mark.parametrize("syntax", SYNTAXES, ids=lambda s: s.name)
def test_transfer_syntaxes_keep_the_pixels(syntax: str, tmp_path: Path) -> None:
    layouts = set()
    for seed in (1, 2, 3):
        plain = write_series(tmp_path / f"plain{seed}", seed=seed, slices=2, size=64)
        packed = write_series(
            tmp_path / f"packed{seed}", seed=seed, slices=2, size=64, transfer_syntax=syntax
        )
        for p, q in zip(plain.paths, packed.paths, strict=True):
            ds, hu = load_slice(q)
            assert ds.file_meta.TransferSyntaxUID == syntax
            np.testing.assert_array_equal(hu, load_slice(p)[1])
            layouts.add((ds.BitsStored, ds.PixelRepresentation))
    assert layouts == {(16, 1), (12, 0), (16, 0)}  # signed (with padding), 12-bit, 16-bit unsigned


def test_unsupported_syntax_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="1.2.840.10008.1.2.4.50"):
        write_series(tmp_path, seed=1, slices=1, size=64, transfer_syntax="1.2.840.10008.1.2.4.50")


@pytest.mark.skipif(
    shutil.which("dciodvfy") is None, reason="dciodvfy (dicom3tools) is not installed"
)
@pytest.mark.parametrize("syntax", [None, RLELossless, JPEGLSLossless, JPEG2000Lossless])
def test_files_pass_dciodvfy(syntax: str | None, tmp_path: Path) -> None:
    for seed in (1, 2, 3):
        series = write_series(
            tmp_path / str(seed), seed=seed, slices=1, size=64, transfer_syntax=syntax
        )
        result = subprocess.run(
            ["dciodvfy", str(series.paths[0])], capture_output=True, text=True, check=False
        )
        report = result.stdout + result.stderr
        assert "CTImage" in report
        errors = [line for line in report.splitlines() if "Error" in line]
        assert errors == [], report


def test_dataset_layout_and_labels_csv(tmp_path: Path) -> None:
    csv_path = write_dataset(
        tmp_path / "ds", studies=10, seed=3, slices=12, size=64, positive_fraction=0.5
    )
    assert csv_path == tmp_path / "ds" / "labels.csv"
    with csv_path.open(newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["ID", "Label"]
    assert all(
        re.fullmatch(
            r"ID_[0-9a-f]{9}_(epidural|intraparenchymal|intraventricular|subarachnoid|subdural|any)",
            r[0],
        )
        for r in rows[1:]
    )
    assert {r[1] for r in rows[1:]} <= {"0", "1"}
    files = sorted((tmp_path / "ds").glob("*/*/*.dcm"))
    assert len(files) == 10 * 12
    assert (len(rows) - 1) == 6 * len(files)
    labels = read_labels(csv_path)
    assert set(labels) == {p.stem for p in files}
    positive_studies = set()
    for path in files:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        assert (
            path.parent.name == ds.SeriesInstanceUID
            and path.parent.parent.name == ds.StudyInstanceUID
        )
        if labels[path.stem][0]:
            positive_studies.add(ds.StudyInstanceUID)
    assert 3 <= len(positive_studies) <= 5
    other = write_dataset(tmp_path / "other", studies=2, seed=4, slices=2, size=64)
    assert not set(read_labels(other)) & set(labels)  # another seed is held-out data


def test_writing_in_several_processes_gives_the_same_files(tmp_path: Path) -> None:
    def contents(root: Path) -> dict[str, bytes]:
        return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
                if p.is_file()}

    kwargs = dict(studies=5, seed=21, slices=6, size=48, style="randomized")
    serial = write_dataset(tmp_path / "serial", **kwargs)  # type: ignore[arg-type]
    parallel = write_dataset(tmp_path / "parallel", workers=3, **kwargs)  # type: ignore[arg-type]
    serial_files, parallel_files = contents(serial.parent), contents(parallel.parent)
    assert len(serial_files) > 5 * 4  # labels.csv and at least 3/4 of 6 slices per study
    assert serial_files == parallel_files

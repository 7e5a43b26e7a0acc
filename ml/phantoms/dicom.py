"""Phantom volumes written as real DICOM (CT Image Storage, PS3.3 A.3) with RSNA-format labels.

Three styles: "classic" (the project's phantoms as they always were), "randomized" (the same
anatomy under a random `Domain`: scanner, protocol, patient and mimics; for training) and
"polar" (ml.phantoms.polar, written apart, for measuring transfer only).
"""

from __future__ import annotations

import csv
import datetime
import hashlib
import multiprocessing
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import FileMetaDataset
from pydicom.uid import (
    CTImageStorage,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    RLELossless,
    generate_uid,
)

from ml.labels import LABELS, SUBTYPES
from ml.phantoms.polar import render_polar
from ml.phantoms.render import Rendered, render

TRANSFER_SYNTAXES = (
    ExplicitVRLittleEndian,
    RLELossless,
    JPEGLSLossless,
    JPEG2000Lossless,
    DeflatedExplicitVRLittleEndian,
)
STYLES: dict[str, Callable[[np.random.Generator, int, int, Sequence[str]], Rendered]] = {
    "classic": lambda rng, slices, size, subtypes: render(rng, slices, size, subtypes),
    "randomized": lambda rng, slices, size, subtypes: render(
        rng, slices, size, subtypes, randomize=True
    ),
    "polar": render_polar,
    # randomized, and aged subdurals, patches, spread along the falx, labels by what shows, a
    # dense falx and scalp hematomas (Domain.draw(varied=True)); not in the shipped recipe
    "varied": lambda rng, slices, size, subtypes: render(
        rng, slices, size, subtypes, randomize=True, varied=True
    ),
}


@dataclass(frozen=True)
class PhantomSeries:
    """One written series."""

    study_uid: str
    series_uid: str
    patient_id: str
    paths: tuple[Path, ...]  # slice order, inferior -> superior
    sop_uids: tuple[str, ...]
    labels: np.ndarray  # (n_slices, 6) uint8, LABELS order


_PIXEL_FORMATS = (  # (BitsStored, PixelRepresentation, padding outside the reconstruction circle)
    (16, 1, -2000),
    (12, 0, None),
    (16, 0, None),
)


def _uid(*parts: object) -> pydicom.uid.UID:
    return generate_uid(entropy_srcs=["ichtriage-phantom", *map(str, parts)])


def _series_attributes(
    rng: np.random.Generator, seed: int, study_uid: str, series_uid: str, patient_id: str,
    volume: Rendered,
) -> dict[str, object]:
    """Everything the slices of one series share (PS3.3 A.3, CT Image IOD)."""
    day = datetime.date(2020, 1, 1) + datetime.timedelta(days=int(rng.integers(0, 1800)))
    moment = f"{int(rng.integers(0, 24)):02d}{int(rng.integers(0, 60)):02d}{int(rng.integers(0, 60)):02d}"
    born = day - datetime.timedelta(days=int(rng.integers(18 * 365, 95 * 365)))
    age = (day - born).days // 365
    return {
        "SpecificCharacterSet": "ISO_IR 100",
        "ImageType": ["ORIGINAL", "PRIMARY", "AXIAL"],
        "SOPClassUID": CTImageStorage,
        "StudyDate": day.strftime("%Y%m%d"), "SeriesDate": day.strftime("%Y%m%d"),
        "AcquisitionDate": day.strftime("%Y%m%d"), "ContentDate": day.strftime("%Y%m%d"),
        "StudyTime": moment, "SeriesTime": moment, "AcquisitionTime": moment, "ContentTime": moment,
        "AccessionNumber": f"PH{seed % 10**10:010d}",
        "Modality": "CT",
        "Manufacturer": "ichtriage",
        "ManufacturerModelName": "head phantom",
        "InstitutionName": "Synthetic",
        "ReferringPhysicianName": "",
        "StudyDescription": "CT HEAD WITHOUT CONTRAST",
        "SeriesDescription": f"AXIAL {volume.thickness_mm:g}mm BRAIN (synthetic phantom)",
        "PatientName": f"PHANTOM^{seed % 10000:04d}",
        "PatientID": patient_id,
        "PatientBirthDate": born.strftime("%Y%m%d"),
        "PatientSex": str(rng.choice(["F", "M"])),
        "PatientAge": f"{age:03d}Y",
        "BodyPartExamined": "HEAD",
        "SliceThickness": round(volume.thickness_mm, 3),
        "KVP": 120,
        "DataCollectionDiameter": 500,
        "ReconstructionDiameter": round(volume.pixel_mm * volume.hu.shape[-1], 2),
        "ConvolutionKernel": "H70s" if volume.domain.noise_passes == 0 else "H30s",
        "PatientPosition": "HFS",
        "StudyInstanceUID": study_uid,
        "SeriesInstanceUID": series_uid,
        "StudyID": "1",
        "SeriesNumber": 2,
        "AcquisitionNumber": 1,
        "FrameOfReferenceUID": _uid(seed, "frame", study_uid),
        "PositionReferenceIndicator": "",
        "ImageOrientationPatient": [1, 0, 0, 0, 1, 0],
        "SamplesPerPixel": 1,
        "PhotometricInterpretation": "MONOCHROME2",
        "BitsAllocated": 16,
        "WindowCenter": [40, 600],
        "WindowWidth": [80, 2800],
        "WindowCenterWidthExplanation": ["BRAIN", "BONE"],
        "RescaleIntercept": -1024,
        "RescaleSlope": 1,
        "RescaleType": "HU",
    }  # fmt: skip


def _stored_values(hu: np.ndarray, bits: int, signed: int, padding: int | None) -> np.ndarray:
    stored = hu.astype(np.int32) + 1024
    if padding is not None:  # outside the reconstruction circle
        size = hu.shape[-1]
        yy, xx = np.ogrid[:size, :size]
        centre = (size - 1) / 2
        stored[(yy - centre) ** 2 + (xx - centre) ** 2 > (size / 2) ** 2] = padding
    np.clip(stored, -(2 ** (bits - 1)) if signed else 0, 2 ** (bits - signed) - 1, out=stored)
    return stored.astype(np.int16 if signed else np.uint16)


def write_series(
    out_dir: Path,
    *,
    seed: int,
    slices: int = 32,
    size: int = 512,
    subtypes: Sequence[str] = (),
    transfer_syntax: str | None = None,
    study_uid: str | None = None,
    patient_id: str | None = None,
    image_ids: bool = False,
    style: str = "classic",
) -> PhantomSeries:
    """Write one phantom series as CT Image Storage files, one per slice, into out_dir.

    The same arguments write byte-identical files. `transfer_syntax` is a UID among
    TRANSFER_SYNTAXES (default Explicit VR Little Endian). `image_ids` names the files like the
    RSNA challenge ("ID_<9 hex>.dcm") instead of "<InstanceNumber>.dcm". `style` is one of
    STYLES.
    """
    if style not in STYLES:
        raise ValueError(f"style: unknown {style!r}; known: {', '.join(STYLES)}")
    syntax = pydicom.uid.UID(transfer_syntax or ExplicitVRLittleEndian)
    if syntax not in TRANSFER_SYNTAXES:
        names = ", ".join(f"{t} ({t.name})" for t in TRANSFER_SYNTAXES)
        raise ValueError(f"transfer_syntax {syntax!r} is not supported; use one of {names}")
    volume_rng, meta_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(2))
    volume = STYLES[style](volume_rng, slices, size, subtypes)
    hu, labels, step = volume.hu, volume.labels, volume.step_mm
    study_uid = study_uid or _uid(seed, "study")
    series_uid = _uid(seed, "series", study_uid)  # write_dataset relies on this recipe
    patient_id = patient_id or f"PHANTOM-{seed}"[:64]
    common = _series_attributes(meta_rng, seed, study_uid, series_uid, patient_id, volume)
    bits, signed, padding = _PIXEL_FORMATS[int(meta_rng.integers(len(_PIXEL_FORMATS)))]
    pixel_mm = volume.pixel_mm
    corner = -(size - 1) / 2 * pixel_mm
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths, sop_uids = [], []
    for k in range(slices):
        sop_uid = _uid(seed, "image", series_uid, k)
        ds = pydicom.Dataset()
        for keyword, value in common.items():
            setattr(ds, keyword, value)
        ds.SOPInstanceUID = sop_uid
        ds.InstanceNumber = k + 1
        z = round(-80.0 + k * step, 3)
        ds.ImagePositionPatient = [round(corner, 3), round(corner, 3), z]
        ds.SliceLocation = z
        ds.Rows = ds.Columns = size
        ds.PixelSpacing = [round(pixel_mm, 6), round(pixel_mm, 6)]
        ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits, bits - 1, signed
        if padding is not None:
            ds.PixelPaddingValue = padding
        ds.PixelData = _stored_values(hu[k], bits, signed, padding).tobytes()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
        ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        if syntax.is_compressed:
            ds.compress(syntax, generate_instance_uid=False)
        else:
            ds.file_meta.TransferSyntaxUID = syntax
        stem = f"ID_{hashlib.sha1(sop_uid.encode()).hexdigest()[:9]}" if image_ids else str(k + 1)
        path = out_dir / f"{stem}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
        sop_uids.append(sop_uid)
    return PhantomSeries(study_uid, series_uid, patient_id, tuple(paths), tuple(sop_uids), labels)


def _study_plan(
    rng: np.random.Generator, studies: int, positive_fraction: float
) -> list[tuple[str, ...]]:
    """Subtypes per study: every subtype equally often, some studies with two or three."""
    positives = round(studies * positive_fraction)
    order = list(SUBTYPES)
    plan: list[tuple[str, ...]] = []
    for i in range(positives):
        if i % len(order) == 0:
            rng.shuffle(order)
        chosen = {order[i % len(order)]}
        while rng.uniform() < 0.3 and len(chosen) < 3:
            chosen.add(str(rng.choice(SUBTYPES)))
        plan.append(tuple(sorted(chosen)))
    plan += [()] * (studies - positives)
    return [plan[i] for i in rng.permutation(studies)]


def write_dataset(
    out_dir: Path,
    *,
    studies: int,
    seed: int,
    slices: int = 24,
    size: int = 256,
    positive_fraction: float = 0.6,
    style: str = "classic",
    workers: int = 0,
) -> Path:
    """Write `studies` phantom studies as out_dir/<StudyUID>/<SeriesUID>/ID_<hex>.dcm and their
    labels as out_dir/labels.csv in the RSNA 2019 stage_2_train.csv format; return the CSV path.

    Styles other than "classic" also vary the number of slices per study, from 3/4 to 3/2 of
    `slices`. `workers` > 1 writes the studies in that many processes; each study has its own
    seed, so the files and the CSV are byte-identical whatever `workers` is.
    """
    if studies < 1:
        raise ValueError(f"studies must be >= 1, got {studies}")
    if not 0 <= positive_fraction <= 1:
        raise ValueError(f"positive_fraction must be in [0, 1], got {positive_fraction}")
    out_dir = Path(out_dir)
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x1C4]))
    jobs = [_StudyJob(out_dir, seed, i, subtypes, slices, size, style)
            for i, subtypes in enumerate(_study_plan(rng, studies, positive_fraction))]
    rows: list[tuple[str, int]] = []
    for series in _run_jobs(jobs, workers):
        for path, labels in zip(series.paths, series.labels, strict=True):
            for name in (*SUBTYPES, "any"):  # the challenge lists "any" last
                rows.append((f"{path.stem}_{name}", int(labels[LABELS.index(name)])))
    csv_path = out_dir / "labels.csv"
    with csv_path.open("w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["ID", "Label"])
        writer.writerows(rows)
    return csv_path


@dataclass(frozen=True)
class _StudyJob:
    """Study `index` of a `write_dataset` call: everything needed to write it in any process."""

    out_dir: Path
    seed: int
    index: int
    subtypes: tuple[str, ...]
    slices: int
    size: int
    style: str

    def __call__(self) -> PhantomSeries:
        seed, i = self.seed, self.index
        study_seed = int(np.random.SeedSequence([seed, i]).generate_state(1)[0])
        study_uid = _uid(seed, "dataset-study", i)
        series_dir = self.out_dir / study_uid / _uid(study_seed, "series", study_uid)
        count = self.slices
        if self.style != "classic":
            count = int(np.random.default_rng([seed, i, 7]).integers(
                self.slices * 3 // 4, self.slices * 3 // 2 + 1))
        return write_series(
            series_dir, seed=study_seed, slices=max(count, 1), size=self.size,
            subtypes=self.subtypes, study_uid=study_uid, patient_id=f"PH-{seed}-{i:05d}"[:64],
            image_ids=True, style=self.style,
        )  # fmt: skip


def _write_study(job: _StudyJob) -> PhantomSeries:
    return job()


def _run_jobs(jobs: list[_StudyJob], workers: int) -> Iterator[PhantomSeries]:
    """The jobs' series in the jobs' order, written here or in `workers` processes."""
    if workers <= 1 or len(jobs) < 2:
        yield from (job() for job in jobs)
        return
    context = multiprocessing.get_context("spawn")  # no fork of a process that may hold threads
    with ProcessPoolExecutor(max_workers=min(workers, len(jobs)), mp_context=context) as pool:
        yield from pool.map(_write_study, jobs)

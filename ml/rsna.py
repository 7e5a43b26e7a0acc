"""The RSNA 2019 Intracranial Hemorrhage Detection data: labels, image index, patient split.

stage_2_train.csv holds rows "ID_<image>_<subtype>,<0|1>" for the six labels of every image; the
images are "<image id>.dcm" files. Splits are by patient: splitting by image puts neighbouring
slices of one series on both sides and inflates validation scores.
"""

from __future__ import annotations

import csv
import heapq
import logging
import math
import os
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError

from ml.labels import LABELS
from ml.volume import slice_position

logger = logging.getLogger(__name__)

_HEADER_TAGS = [
    "PatientID",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "ImagePositionPatient",
    "ImageOrientationPatient",
    "InstanceNumber",
]


@dataclass(frozen=True)
class ImageRecord:
    """One labelled slice on disk."""

    image_id: str
    path: Path
    patient_id: str
    study_uid: str
    series_uid: str
    position: float  # mm along the slice normal; nan when the header has no geometry
    labels: np.ndarray = field(compare=False, repr=False)  # (6,) uint8, LABELS order
    instance_number: int | None = None


def read_labels(csv_path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """Image id -> (6,) uint8 labels in LABELS order, from an RSNA stage_*_train.csv file.

    Rows may come in any order; identical duplicate rows are ignored. A malformed row, a
    conflicting duplicate or an image without all six labels is a ValueError that says where.
    """
    path = Path(csv_path)
    found: dict[str, dict[str, int]] = defaultdict(dict)
    with path.open(newline="") as f:
        for line, row in enumerate(csv.reader(f), start=1):
            if not row or (line == 1 and [c.strip() for c in row] == ["ID", "Label"]):
                continue
            image_id, subtype, label = _parse_row(row, path, line)
            seen = found[image_id].setdefault(subtype, label)
            if seen != label:
                raise ValueError(
                    f"{path}:{line}: {image_id} {subtype} is {label} here but {seen} earlier"
                )
    labels: dict[str, np.ndarray] = {}
    for image_id, by_name in found.items():
        missing = [name for name in LABELS if name not in by_name]
        if missing:
            raise ValueError(f"{path}: {image_id} has no label for {', '.join(missing)}")
        labels[image_id] = np.array([by_name[name] for name in LABELS], dtype=np.uint8)
    return labels


def _parse_row(row: Sequence[str], path: Path, line: int) -> tuple[str, str, int]:
    if len(row) != 2:
        raise ValueError(f"{path}:{line}: expected 'ID_<image>_<subtype>,<0|1>', got {row!r}")
    key, value = row[0].strip(), row[1].strip()
    image_id, _, subtype = key.rpartition("_")
    if not image_id.startswith("ID_") or subtype not in LABELS:
        raise ValueError(
            f"{path}:{line}: {key!r} is not 'ID_<image>_<subtype>' with a known subtype"
        )
    if value not in ("0", "1"):
        raise ValueError(f"{path}:{line}: label {value!r} for {key} is not 0 or 1")
    return image_id, subtype, int(value)


def index_images(
    dicom_dir: str | os.PathLike[str], labels: Mapping[str, np.ndarray]
) -> list[ImageRecord]:
    """Every "<image id>.dcm" under dicom_dir (recursively) that has labels, headers only.

    Unreadable files are skipped; their count is logged as a warning. Labelled IDs without a
    file are left out with one warning line (their count, the first few): the full RSNA
    stage_2_train.csv over a subset of its images is the usual case, not an error.
    """
    records: list[ImageRecord] = []
    skipped = 0
    seen: set[str] = set()
    for path in sorted(Path(dicom_dir).rglob("*.dcm")):
        image_id = path.stem
        if image_id not in labels:
            continue
        seen.add(image_id)
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=_HEADER_TAGS)
        except (InvalidDicomError, OSError, EOFError, ValueError, KeyError, TypeError) as exc:
            logger.debug("skipping %s: %s", path, exc)
            skipped += 1
            continue
        if "SeriesInstanceUID" not in ds:
            logger.debug("skipping %s: no SeriesInstanceUID", path)
            skipped += 1
            continue
        number = ds.get("InstanceNumber")
        records.append(
            ImageRecord(
                image_id=image_id,
                path=path,
                patient_id=str(ds.get("PatientID", "")),
                study_uid=str(ds.get("StudyInstanceUID", "")),
                series_uid=str(ds.SeriesInstanceUID),
                position=_slice_position(ds),
                labels=np.asarray(labels[image_id], dtype=np.uint8),
                instance_number=int(number) if number not in (None, "") else None,
            )
        )
    if skipped:
        logger.warning("index_images: skipped %d unreadable file(s) under %s", skipped, dicom_dir)
    _warn_unmatched(labels, seen, dicom_dir)
    logger.info("index_images: %d labelled image(s) under %s", len(records), dicom_dir)
    return records


def _warn_unmatched(labels: Mapping[str, np.ndarray], seen: set[str],
                    dicom_dir: str | os.PathLike[str]) -> None:
    """One warning line for the labelled image IDs that have no <ID>.dcm under dicom_dir."""
    unmatched = len(labels) - len(seen)
    if unmatched > 0:
        first = heapq.nsmallest(3, (i for i in labels if i not in seen))
        logger.warning("labels: %d of %d labelled image IDs have no <ID>.dcm under %s and are "
                       "left out (first: %s)", unmatched, len(labels), dicom_dir,
                       ", ".join(first))


def _slice_position(ds: pydicom.Dataset) -> float:
    """ImagePositionPatient along the slice normal turned superior, as `ml.volume` orders the
    node's slices (PS3.3 C.7.6.2.1.1); z without an orientation, nan without a position."""
    position = ds.get("ImagePositionPatient")
    if position is None or len(position) != 3:
        return math.nan
    orientation = ds.get("ImageOrientationPatient")
    along = None
    if orientation is not None and len(orientation) == 6:
        along = slice_position([float(v) for v in position], [float(v) for v in orientation])
    return along if along is not None else float(position[2])


def split_by_patient(
    records: Sequence[ImageRecord], *, val_fraction: float, seed: int
) -> tuple[list[ImageRecord], list[ImageRecord]]:
    """(train, validation) with every patient on one side only.

    Patients with any positive slice and those without are shuffled and cut separately, so both
    sides get positives whenever there are two or more positive patients. The same seed and
    records give the same split; record order is kept within each side.
    """
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    by_patient: dict[str, list[ImageRecord]] = defaultdict(list)
    for record in records:
        by_patient[record.patient_id].append(record)
    positive = sorted(p for p, rs in by_patient.items() if any(r.labels[0] for r in rs))
    negative = sorted(set(by_patient) - set(positive))
    rng = np.random.default_rng(seed)
    held_out: set[str] = set()
    for group in (positive, negative):
        held_out.update(_cut(group, val_fraction, rng))
    train = [r for r in records if r.patient_id not in held_out]
    val = [r for r in records if r.patient_id in held_out]
    return train, val


def _cut(patients: list[str], fraction: float, rng: np.random.Generator) -> list[str]:
    if not patients:
        return []
    n = round(fraction * len(patients))
    if len(patients) >= 2:
        n = min(max(n, 1), len(patients) - 1)
    order = rng.permutation(len(patients))
    return [patients[i] for i in order[:n]]


def group_series(records: Iterable[ImageRecord]) -> list[list[ImageRecord]]:
    """Records per series, each sorted along the slice normal (InstanceNumber when unknown).

    Series come in the order they first appear.
    """
    groups: dict[tuple[str, str], list[ImageRecord]] = {}
    for record in records:
        groups.setdefault((record.study_uid, record.series_uid), []).append(record)
    return [_sort_series(series) for series in groups.values()]


def _sort_series(series: list[ImageRecord]) -> list[ImageRecord]:
    if all(math.isfinite(r.position) for r in series):
        return sorted(series, key=lambda r: (r.position, r.instance_number or 0, r.image_id))
    return sorted(
        series, key=lambda r: (r.instance_number is None, r.instance_number or 0, r.image_id)
    )

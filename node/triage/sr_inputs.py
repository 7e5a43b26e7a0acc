"""What the worker gives `node.triage.sr.build_triage_sr`, and the checks of those arguments:
each raises TypeError or ValueError naming the argument, as highdicom's SR templates do."""

from __future__ import annotations

import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from pydicom.dataset import Dataset

from ml.labels import LABELS

_SOURCE_UIDS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPClassUID", "SOPInstanceUID")


@dataclass(frozen=True)
class AlgorithmInfo:
    """The model that made the result, for TID 4019 and the General Equipment module."""

    name: str  # e.g. "ichnet_seq"
    version: str  # e.g. the checkpoint's sha256[:12] or a semantic version
    parameters: dict[str, str]  # e.g. windows, input size; written as "key=value"
    manufacturer: str = "ICH triage node (open source)"


@dataclass(frozen=True)
class LabelResult:
    """The model's series-level result for one label."""

    label: str  # one of LABELS
    probability: float  # 0..1
    present: bool  # the model's call at `threshold`
    threshold: float
    key_slice: int | None  # index into `source` of the key slice; None for an absent finding
    key_frame: int | None = None  # its frame number, when `source[key_slice]` is multi-frame


def checked_source(source: Sequence[Dataset]) -> list[Dataset]:
    if isinstance(source, (str, bytes, Dataset)) or not isinstance(source, Sequence):
        raise TypeError('Argument "source" must be a sequence of pydicom Datasets.')
    if len(source) == 0:
        raise ValueError('Argument "source" must not be empty.')
    for i, ds in enumerate(source):
        if not isinstance(ds, Dataset):
            raise TypeError(f'Argument "source[{i}]" must be a pydicom Dataset, '
                            f'not {type(ds).__name__}.')
        missing = [keyword for keyword in _SOURCE_UIDS if not ds.get(keyword)]
        if missing:
            raise ValueError(f'Argument "source[{i}]" lacks {", ".join(missing)}.')
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID"):
        values = {str(ds[keyword].value) for ds in source}
        if len(values) > 1:
            raise ValueError(f'Argument "source" must hold one series; it has {len(values)} '
                             f'values of {keyword}.')
    if len({str(ds.SOPInstanceUID) for ds in source}) != len(source):
        raise ValueError('Argument "source" holds an instance twice (same SOPInstanceUID).')
    return list(source)


def checked_results(results: Sequence[LabelResult], *, n_images: int) -> list[LabelResult]:
    """The results in LABELS order, after checking each."""
    if isinstance(results, (str, bytes)) or not isinstance(results, Sequence):
        raise TypeError('Argument "results" must be a sequence of LabelResult.')
    if len(results) == 0:
        raise ValueError('Argument "results" must not be empty.')
    by_label: dict[str, LabelResult] = {}
    for i, result in enumerate(results):
        name = f"results[{i}]"
        if not isinstance(result, LabelResult):
            raise TypeError(f'Argument "{name}" must be a LabelResult, '
                            f'not {type(result).__name__}.')
        if result.label not in LABELS:
            raise ValueError(f'Argument "{name}.label" is {result.label!r}, not one of {LABELS}.')
        if result.label in by_label:
            raise ValueError(f'Argument "{name}.label" repeats {result.label!r}.')
        check_unit_interval(result.probability, f"{name}.probability")
        check_unit_interval(result.threshold, f"{name}.threshold")
        if not isinstance(result.present, bool):
            raise TypeError(f'Argument "{name}.present" must be a bool.')
        check_key_slice(result.key_slice, f"{name}.key_slice", n_images)
        if result.key_slice is not None and not result.present:
            raise ValueError(f'Argument "{name}.key_slice" must be None: an absent finding '
                             f'cites no slice.')
        if result.key_frame is not None and (result.key_slice is None or isinstance(
                result.key_frame, bool) or not isinstance(result.key_frame, numbers.Integral)
                or result.key_frame < 1):
            raise ValueError(f'Argument "{name}.key_frame" must be a frame number >= 1 of the '
                             f'key slice, or None.')
        by_label[result.label] = result
    return [by_label[label] for label in LABELS if label in by_label]


def checked_frames(frames: Mapping[str, Sequence[int]] | None,
                    images: list[Dataset]) -> dict[str, list[int]]:
    if frames is None:
        return {}
    if not isinstance(frames, Mapping):
        raise TypeError('Argument "frames" must map SOPInstanceUID to frame numbers.')
    by_uid = {str(ds.SOPInstanceUID): ds for ds in images}
    checked: dict[str, list[int]] = {}
    for uid, frame_numbers in frames.items():
        if uid not in by_uid:
            raise ValueError(f'Argument "frames" names {uid}, which is not in "source".')
        count = int(by_uid[uid].get("NumberOfFrames", 1) or 1)
        values = list(frame_numbers)
        if not values or any(isinstance(n, bool) or not isinstance(n, numbers.Integral)
                             or not 1 <= int(n) <= count for n in values):
            raise ValueError(f'Argument "frames[{uid}]" must list frame numbers in 1..{count}.')
        checked[uid] = [int(n) for n in values]
    return checked


def checked_previous(previous: Sequence[object]) -> list[Dataset]:
    """Earlier reports as the datasets highdicom reads the predecessor references from."""
    if isinstance(previous, (str, bytes)) or not isinstance(previous, Sequence):
        raise TypeError('Argument "previous_versions" must be a sequence.')
    items = []
    for i, report in enumerate(previous):
        item = Dataset()
        for keyword in _SOURCE_UIDS:
            value = getattr(report, keyword, None)
            if not isinstance(value, str) or not value:
                raise ValueError(f'Argument "previous_versions[{i}]" lacks {keyword}.')
            setattr(item, keyword, value)
        items.append(item)
    return items


def check_notes(notes: Sequence[str]) -> None:
    if isinstance(notes, str) or not isinstance(notes, Sequence):
        raise TypeError('Argument "notes" must be a sequence of str.')
    for i, note in enumerate(notes):
        if not isinstance(note, str) or not note or not note.isascii():
            raise ValueError(f'Argument "notes[{i}]" must be a non-empty ASCII string.')


def check_unit_interval(value: object, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f'Argument "{name}" must be a real number, not {type(value).__name__}.')
    if not 0.0 <= float(value) <= 1.0:  # NaN fails too
        raise ValueError(f'Argument "{name}" is {value}, outside [0, 1].')


def check_key_slice(value: object, name: str, n_images: int) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f'Argument "{name}" must be an int or None, not {type(value).__name__}.')
    if not 0 <= int(value) < n_images:
        raise ValueError(f'Argument "{name}" is {value}, outside the {n_images} source slices.')


def check_algorithm(algorithm: AlgorithmInfo) -> None:
    if not isinstance(algorithm, AlgorithmInfo):
        raise TypeError(f'Argument "algorithm" must be an AlgorithmInfo, '
                        f'not {type(algorithm).__name__}.')
    for field in ("name", "version", "manufacturer"):
        value = getattr(algorithm, field)
        if not isinstance(value, str) or not value.strip():
            raise ValueError(f'Argument "algorithm.{field}" must be a non-empty string.')
    if not isinstance(algorithm.parameters, Mapping):
        raise TypeError('Argument "algorithm.parameters" must be a mapping of str to str.')
    for key, value in algorithm.parameters.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise TypeError(f'Argument "algorithm.parameters" must map str to str, '
                            f'not {key!r}: {value!r}.')

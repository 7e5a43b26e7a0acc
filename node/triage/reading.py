"""A series' stored files read as the volume the model sees: headers first (to assemble the
volume with `ml.volume`), then the pixels of the volume's slices in its order, one instance
at a time. What cannot be read is noted per plane, never dropped silently."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from ml.errors import SliceError
from ml.planes import planes_of
from ml.volume import Plane, PlaneKey, Volume, VolumeRules, cavity_area, head_area
from ml.windowing import to_hounsfield
from storage.files import FileStore
from storage.results import SeriesInstance

logger = logging.getLogger(__name__)

_READ_ERRORS = (InvalidDicomError, OSError, ValueError, AttributeError, KeyError, TypeError)


@dataclass
class SeriesHeaders:
    """The planes of a series' instances and each instance's header (without pixel data)."""

    planes: list[Plane] = field(default_factory=list)
    headers: dict[str, Dataset] = field(default_factory=dict)  # by SOPInstanceUID
    instances: dict[str, SeriesInstance] = field(default_factory=dict)  # by SOPInstanceUID
    unreadable: dict[PlaneKey, str] = field(default_factory=dict)


def read_headers(files: FileStore, instances: Sequence[SeriesInstance]) -> SeriesHeaders:
    read = SeriesHeaders()
    for instance in instances:
        read.instances[instance.sop_uid] = instance
        try:
            ds = dcmread(files.path_of(instance.file_path), stop_before_pixels=True)
            planes = planes_of(ds)
        except _READ_ERRORS as exc:
            logger.warning("instance %s: header unreadable: %s", instance.sop_uid, exc)
            planes = [Plane(instance.sop_uid, n) for n in
                      range(1, max(instance.number_of_frames or 1, 1) + 1)]
            read.unreadable.update({p.key: f"header unreadable: {exc}" for p in planes})
        else:
            read.headers[instance.sop_uid] = ds
        read.planes.extend(planes)
    return read


@dataclass
class PixelsRead:
    """What reading a volume's pixels found, filled while the HU slices are consumed."""

    used: list[PlaneKey] = field(default_factory=list)
    skipped: dict[PlaneKey, str] = field(default_factory=dict)
    head_areas: dict[PlaneKey, float] = field(default_factory=dict)
    cavity_areas: dict[PlaneKey, float] = field(default_factory=dict)


def hounsfield(files: FileStore, series: SeriesHeaders, volume: Volume, rules: VolumeRules,
               read: PixelsRead) -> Iterator[np.ndarray]:
    """(rows, cols) HU slices in the volume's order; an instance is decoded once, and a
    multi-frame instance is kept only until its last frame in the volume is given."""
    last_use = {p.sop_instance_uid: i for i, p in enumerate(volume.slices)}
    decoded: dict[str, np.ndarray] = {}
    failed: dict[str, str] = {}
    for i, plane in enumerate(volume.slices):
        uid = plane.sop_instance_uid
        if uid not in decoded and uid not in failed:
            try:
                decoded[uid] = _decode(files, series.instances[uid])
            except (SliceError, *_READ_ERRORS) as exc:
                failed[uid] = str(exc)
                logger.warning("instance %s: pixels unreadable: %s", uid, exc)
        if uid in failed:
            read.skipped[plane.key] = failed[uid]
            continue
        frames = decoded[uid]
        if last_use[uid] == i:
            del decoded[uid]
        if plane.frame_number > frames.shape[0]:
            read.skipped[plane.key] = f"frame {plane.frame_number} of {frames.shape[0]}"
            continue
        hu = frames[plane.frame_number - 1]
        read.used.append(plane.key)
        read.head_areas[plane.key] = head_area(hu, rules)
        read.cavity_areas[plane.key] = cavity_area(hu, rules)
        yield hu


def _decode(files: FileStore, instance: SeriesInstance) -> np.ndarray:
    ds = dcmread(files.path_of(instance.file_path))
    return to_hounsfield(ds)

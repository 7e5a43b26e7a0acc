"""A memory-mapped cache of preprocessed slices, so DICOM is decoded once per dataset.

cache_dir holds slices.u8 (uint8, shape (N, C, S, S): windowed values times 255) and index.json
(image and series ids, positions, labels, windows, sizes, what was skipped, and a key). The key
hashes the windows, sizes and the source files (path, size, mtime, labels): when any changes,
build_cache rebuilds instead of serving stale pixels.

Building in parallel: `build_cache(workers=N)` decodes in N processes; `build_shard` lets N
independent processes (torchrun ranks: `ml.distributed.build_cache_together`) each encode
records[rank::N], and `join_shards` turns the shards into the same bytes a serial build writes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import multiprocessing
import os
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ml.errors import SliceError
from ml.planes import pixel_spacing_of
from ml.rsna import ImageRecord
from ml.windowing import WINDOWS, Window, fit_shape, load_slice, preprocess

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

CACHE_VERSION = 1
DATA_FILE = "slices.u8"
INDEX_FILE = "index.json"


@dataclass(frozen=True)
class SkippedSlice:
    image_id: str
    path: str
    reason: str


class SliceCache:
    """Read side of the cache: x float32 (C, S, S) in [0, 1] and y float32 (6,) per slice."""

    def __init__(self, cache_dir: Path, index: dict[str, Any], data: np.ndarray) -> None:
        self.cache_dir = cache_dir
        self.key: str = index["key"]
        self.windows = tuple(Window(**w) for w in index["windows"])
        self.size: int = index["size"]
        self.out_size: int | None = index["out_size"]
        self.field_of_view_mm: float | None = index.get("field_of_view_mm")
        self.image_ids: list[str] = index["image_ids"]
        self.series_uids: list[str] = index["series_uids"]
        self.positions = np.array(index["positions"], dtype=np.float64)
        self.labels = np.array(index["labels"], dtype=np.uint8).reshape(-1, 6)
        self.skipped = tuple(SkippedSlice(**s) for s in index["skipped"])
        self.data = data
        self._order, self._rank = _series_order(self.series_uids, self.positions)

    @classmethod
    def open(cls, cache_dir: str | os.PathLike[str]) -> SliceCache:
        cache_dir = Path(cache_dir)
        index = json.loads((cache_dir / INDEX_FILE).read_text())
        if index.get("version") != CACHE_VERSION:
            raise ValueError(
                f"{cache_dir}: cache version {index.get('version')}, expected {CACHE_VERSION}"
            )
        shape = tuple(index["shape"])
        if shape[0] == 0:
            data = np.zeros(shape, dtype=np.uint8)
        else:
            data = np.memmap(cache_dir / DATA_FILE, dtype=np.uint8, mode="r", shape=shape)
        return cls(cache_dir, index, data)

    def __len__(self) -> int:
        return len(self.image_ids)

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        return self.pixels(i), self.labels[i].astype(np.float32)

    def pixels(self, i: int | np.ndarray) -> np.ndarray:
        """Slice i (C, S, S), or slices i (len(i), C, S, S), as float32 in [0, 1]."""
        x = np.asarray(self.data[i], dtype=np.float32)
        x *= np.float32(1 / 255)
        return x

    def series_members(self) -> dict[str, np.ndarray]:
        """Series UID -> indices of its slices along the slice normal, series in first-seen order."""
        return {uid: order.copy() for uid, order in self._order.items()}

    def neighbors(self, i: int, k: int) -> np.ndarray:
        """Indices of slices i-k .. i+k of i's series along its normal, repeating the end slices."""
        if k < 0:
            raise ValueError(f"k must be >= 0, got {k}")
        order = self._order[self.series_uids[i]]
        steps = np.clip(np.arange(self._rank[i] - k, self._rank[i] + k + 1), 0, len(order) - 1)
        return order[steps]


def _series_order(
    series: list[str], positions: np.ndarray
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    members: dict[str, list[int]] = {}
    for i, uid in enumerate(series):
        members.setdefault(uid, []).append(i)
    order: dict[str, np.ndarray] = {}
    rank = np.zeros(len(series), dtype=np.int64)
    for uid, idx in members.items():
        ids = np.array(idx, dtype=np.int64)
        pos = positions[ids]
        if np.all(np.isfinite(pos)):
            ids = ids[np.argsort(pos, kind="stable")]
        order[uid] = ids
        rank[ids] = np.arange(len(ids))
    return order, rank


class SliceDataset:
    """Map-style dataset for torch's DataLoader: (x (C*(2*context+1), S, S), y (6,)) tensors.

    With context k each item stacks slices i-k .. i+k of the same series (2.5D input), nearest
    first-to-last along the slice normal; the channels of one slice stay together.
    """

    def __init__(self, cache: SliceCache, context: int = 0) -> None:
        if context < 0:
            raise ValueError(f"context must be >= 0, got {context}")
        self.cache = cache
        self.context = context

    def __len__(self) -> int:
        return len(self.cache)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        import torch

        x = self.cache.pixels(self.cache.neighbors(i, self.context))
        x = x.reshape(-1, *x.shape[-2:])
        return torch.from_numpy(x), torch.from_numpy(self.cache.labels[i].astype(np.float32))


# --- building ------------------------------------------------------------------------------------


def as_windows(windows: Sequence[Window | str]) -> tuple[Window, ...]:
    if isinstance(windows, str) or not windows:
        raise ValueError(
            f"windows must be a non-empty sequence of windows or names, got {windows!r}"
        )
    out = []
    for w in windows:
        if isinstance(w, str):
            if w not in WINDOWS:
                raise ValueError(f"windows: unknown window {w!r}; known: {', '.join(WINDOWS)}")
            w = WINDOWS[w]
        out.append(w)
    return tuple(out)


def cache_key(
    records: Sequence[ImageRecord], windows: Sequence[Window], size: int, out_size: int | None,
    field_of_view_mm: float | None = None,
) -> str:  # fmt: skip
    """Changes when the windows, sizes, field of view, files (path, size, mtime) or labels
    change."""
    digest = hashlib.sha256()
    settings: list[Any] = [CACHE_VERSION, [[w.name, w.center, w.width] for w in windows], size,
                           out_size]
    if field_of_view_mm is not None:  # caches fitted by pixels keep their keys
        settings.append(float(field_of_view_mm))
    digest.update(json.dumps(settings).encode())
    for r in records:
        try:
            st = os.stat(r.path)
            stamp = f"{st.st_size}:{st.st_mtime_ns}"
        except OSError:
            stamp = "missing"
        digest.update(f"\n{r.image_id}|{r.path}|{stamp}|{r.labels.tolist()}".encode())
    return digest.hexdigest()


def _encode(
    path: str, windows: tuple[Window, ...], size: int, out_size: int | None,
    field_of_view_mm: float | None = None,
) -> np.ndarray | str:  # fmt: skip
    """One slice as uint8 (C, S, S), or the reason it cannot be used. With a field of view
    the slice's PixelSpacing decides the fit (`ml.windowing.fit_shape`), else `size` pixels."""
    try:
        ds, hu = load_slice(path)
        if hu.shape[0] != 1:
            raise SliceError(f"{path}: {hu.shape[0]} frames; the cache takes single-frame slices")
    except SliceError as exc:
        return str(exc)
    fit = size if field_of_view_mm is None else fit_shape(pixel_spacing_of(ds), field_of_view_mm)
    x = preprocess(hu, windows, size=fit, out_size=out_size)[0]
    np.multiply(x, 255, out=x)
    np.rint(x, out=x)
    return x.astype(np.uint8)


def _encode_all(
    paths: list[str], windows: tuple[Window, ...], size: int, out_size: int | None, workers: int,
    field_of_view_mm: float | None = None,
) -> Iterator[np.ndarray | str]:  # fmt: skip
    if workers <= 0:
        for path in paths:
            yield _encode(path, windows, size, out_size, field_of_view_mm)
        return
    context = multiprocessing.get_context("spawn")  # no fork of a process that may hold threads
    n = len(paths)
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        yield from pool.map(
            _encode, paths, [windows] * n, [size] * n, [out_size] * n, [field_of_view_mm] * n,
            chunksize=max(1, min(64, math.ceil(n / (4 * workers)))),
        )  # fmt: skip


def build_cache(
    records: Sequence[ImageRecord],
    cache_dir: str | os.PathLike[str],
    *,
    windows: Sequence[Window | str],
    size: int,
    out_size: int | None = None,
    workers: int = 0,
    field_of_view_mm: float | None = None,
) -> SliceCache:
    """Decode and preprocess every record once into cache_dir, or reuse a cache with the same key.

    Slices are fitted to `size` pixels, or with `field_of_view_mm` to that many millimetres
    (then `out_size` is required), and resized to `out_size` (see `ml.windowing.preprocess`).
    Slices that cannot be decoded are skipped, counted and logged with their reason; they never
    stop the build. workers > 0 decodes in that many processes.
    """
    wins = as_windows(windows)
    _check_fit(out_size, field_of_view_mm)
    cache_dir = Path(cache_dir)
    key = cache_key(records, wins, size, out_size, field_of_view_mm)
    current = current_cache(cache_dir, key)
    if current is not None:
        return current
    results = _encode_all([os.fspath(r.path) for r in records], wins, size, out_size, workers,
                          field_of_view_mm)
    return _write_cache(records, cache_dir, wins, size, out_size, key, results, field_of_view_mm)


def _check_fit(out_size: int | None, field_of_view_mm: float | None) -> None:
    if field_of_view_mm is not None and out_size is None:
        raise ValueError("out_size: needed with field_of_view_mm (the fit varies per slice)")


def current_cache(cache_dir: Path, key: str) -> SliceCache | None:
    """The cache in cache_dir when it was built with `key` (see `cache_key`), else None."""
    try:
        cache = SliceCache.open(cache_dir)
        if cache.key == key:
            logger.info("cache %s is current (%d slices)", cache_dir, len(cache))
            return cache
        logger.info("cache %s is stale; rebuilding", cache_dir)
    except (OSError, ValueError, KeyError, TypeError):
        logger.info("building cache %s", cache_dir)
    return None


def _write_cache(
    records: Sequence[ImageRecord], cache_dir: Path, wins: tuple[Window, ...], size: int,
    out_size: int | None, key: str, results: Iterable[np.ndarray | str],
    field_of_view_mm: float | None = None,
) -> SliceCache:  # fmt: skip
    """Write `results` (one per record, in order: uint8 (C, S, S) or why it was skipped)."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    (cache_dir / INDEX_FILE).unlink(missing_ok=True)  # a crash mid-build leaves no valid cache
    side = out_size or size
    shape = (len(wins), side, side)
    partial = cache_dir / (DATA_FILE + ".partial")
    kept: list[int] = []
    skipped: list[SkippedSlice] = []
    with partial.open("wb") as out:
        for i, result in enumerate(results):
            if isinstance(result, str):
                skipped.append(
                    SkippedSlice(records[i].image_id, os.fspath(records[i].path), result)
                )
                continue
            out.write(result.tobytes())
            kept.append(i)
    os.replace(partial, cache_dir / DATA_FILE)
    if skipped:
        logger.warning("cache %s: skipped %d of %d slices", cache_dir, len(skipped), len(records))
        for s in skipped[:20]:
            logger.warning("skipped %s: %s", s.image_id, s.reason)
    index = {
        "version": CACHE_VERSION,
        "key": key,
        "windows": [{"name": w.name, "center": w.center, "width": w.width} for w in wins],
        "size": size,
        "out_size": out_size,
        "field_of_view_mm": field_of_view_mm,
        "shape": [len(kept), *shape],
        "image_ids": [records[i].image_id for i in kept],
        "study_uids": [records[i].study_uid for i in kept],
        "series_uids": [records[i].series_uid for i in kept],
        "positions": [_json_float(records[i].position) for i in kept],
        "labels": [records[i].labels.astype(int).tolist() for i in kept],
        "skipped": [asdict(s) for s in skipped],
    }
    tmp = cache_dir / (INDEX_FILE + ".partial")
    tmp.write_text(json.dumps(index))
    os.replace(tmp, cache_dir / INDEX_FILE)
    return SliceCache.open(cache_dir)


# --- building in shards, one per process (ml.distributed: one per rank) -------------------------


def _shard_paths(cache_dir: Path, rank: int) -> tuple[Path, Path]:
    return cache_dir / f"{DATA_FILE}.shard-{rank}", cache_dir / f"shard-{rank}.json"


def build_shard(
    records: Sequence[ImageRecord], cache_dir: str | os.PathLike[str], *,
    windows: Sequence[Window | str], size: int, out_size: int | None = None, rank: int,
    world_size: int, workers: int = 0, field_of_view_mm: float | None = None,
) -> int:  # fmt: skip
    """Encode records[rank::world_size] into shard `rank` of cache_dir; `join_shards` makes
    the cache once every shard is written. Returns the records this shard encoded.

    Shard files: slices.u8.shard-<rank> (the kept slices, uint8 (C, S, S) each, in order) and
    shard-<rank>.json ({"reasons": {position in the shard: why it was skipped}}).
    """
    if not 0 <= rank < world_size:
        raise ValueError(f"rank: must lie in [0, {world_size}), got {rank}")
    wins = as_windows(windows)
    _check_fit(out_size, field_of_view_mm)
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    data_path, meta_path = _shard_paths(cache_dir, rank)
    mine = [os.fspath(r.path) for r in records[rank::world_size]]
    reasons: dict[str, str] = {}
    with data_path.open("wb") as out:
        for j, result in enumerate(_encode_all(mine, wins, size, out_size, workers,
                                               field_of_view_mm)):
            if isinstance(result, str):
                reasons[str(j)] = result
            else:
                out.write(result.tobytes())
    meta_path.write_text(json.dumps({"reasons": reasons}))
    return len(mine)


def join_shards(
    records: Sequence[ImageRecord], cache_dir: str | os.PathLike[str], *,
    windows: Sequence[Window | str], size: int, out_size: int | None = None, world_size: int,
    field_of_view_mm: float | None = None,
) -> SliceCache:  # fmt: skip
    """The cache of `records` from the `world_size` shards `build_shard` wrote (then removed):
    byte for byte the cache `build_cache` writes. OSError when a shard is missing."""
    wins = as_windows(windows)
    cache_dir = Path(cache_dir)
    side = out_size or size
    slice_bytes = len(wins) * side * side
    shards = [_shard_paths(cache_dir, rank) for rank in range(world_size)]
    reasons = [json.loads(meta.read_text())["reasons"] for _, meta in shards]

    def results() -> Iterator[np.ndarray | str]:
        files = [data.open("rb") for data, _ in shards]
        try:
            for i in range(len(records)):
                rank, j = i % world_size, i // world_size
                if str(j) in reasons[rank]:
                    yield reasons[rank][str(j)]
                    continue
                chunk = files[rank].read(slice_bytes)
                if len(chunk) != slice_bytes:
                    raise OSError(f"{shards[rank][0]}: ends before slice {j}")
                yield np.frombuffer(chunk, dtype=np.uint8)
        finally:
            for f in files:
                f.close()

    key = cache_key(records, wins, size, out_size, field_of_view_mm)
    cache = _write_cache(records, cache_dir, wins, size, out_size, key, results(),
                         field_of_view_mm)
    for data, meta in shards:
        data.unlink(missing_ok=True)
        meta.unlink(missing_ok=True)
    return cache


def _json_float(value: float) -> float | None:
    return value if math.isfinite(value) else None

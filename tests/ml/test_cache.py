"""The preprocessing cache: build once, reopen, skip corrupt slices, rebuild when stale."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch

from ml.cache import (
    DATA_FILE,
    INDEX_FILE,
    SliceCache,
    SliceDataset,
    build_cache,
    build_shard,
    join_shards,
)
from ml.phantom import write_dataset
from ml.rsna import ImageRecord, group_series, index_images, read_labels
from ml.windowing import DEFAULT_WINDOWS, load_slice, preprocess, windows_by_name

SIZE, OUT = 64, 32


@pytest.fixture
def records(tmp_path: Path) -> list[ImageRecord]:
    csv_path = write_dataset(tmp_path / "data", studies=2, seed=11, slices=5, size=SIZE)
    return index_images(tmp_path / "data", read_labels(csv_path))


def expected_pixels(record: ImageRecord, windows: tuple[str, ...] = DEFAULT_WINDOWS) -> np.ndarray:
    _, hu = load_slice(record.path)
    return preprocess(hu, windows_by_name(windows), size=SIZE, out_size=OUT)[0]


def test_build_matches_preprocess_and_reopens(records: list[ImageRecord], tmp_path: Path) -> None:
    cache = build_cache(
        records, tmp_path / "cache", windows=DEFAULT_WINDOWS, size=SIZE, out_size=OUT
    )
    assert len(cache) == len(records) == 10
    assert cache.data.shape == (10, 3, OUT, OUT)
    assert cache.skipped == ()
    for i, record in enumerate(records):
        x, y = cache[i]
        assert x.dtype == np.float32 and x.shape == (3, OUT, OUT)
        np.testing.assert_allclose(x, expected_pixels(record), rtol=0, atol=0.5 / 255 + 1e-6)
        np.testing.assert_array_equal(y, record.labels.astype(np.float32))
        assert cache.image_ids[i] == record.image_id
    reopened = SliceCache.open(tmp_path / "cache")
    assert reopened.key == cache.key
    assert reopened.windows == windows_by_name(DEFAULT_WINDOWS)
    np.testing.assert_array_equal(reopened.pixels(np.arange(10)), cache.pixels(np.arange(10)))


def test_current_cache_is_reused_and_stale_one_rebuilt(
    records: list[ImageRecord], tmp_path: Path
) -> None:
    first = build_cache(
        records, tmp_path / "c", windows=["brain", "subdural", "bone"], size=SIZE, out_size=OUT
    )
    data = tmp_path / "c" / DATA_FILE
    os.utime(data, ns=(1, 1))
    again = build_cache(
        records, tmp_path / "c", windows=windows_by_name(DEFAULT_WINDOWS), size=SIZE, out_size=OUT
    )
    assert again.key == first.key
    assert data.stat().st_mtime_ns == 1  # not rewritten

    other = build_cache(
        records, tmp_path / "c", windows=["brain", "vascular"], size=SIZE, out_size=OUT
    )
    assert other.key != first.key
    assert other.data.shape == (10, 2, OUT, OUT)
    np.testing.assert_allclose(
        other[3][0], expected_pixels(records[3], ("brain", "vascular")), atol=0.5 / 255 + 1e-6
    )

    os.utime(records[0].path, ns=(5, 5))  # a source file changed
    touched = build_cache(
        records, tmp_path / "c", windows=["brain", "vascular"], size=SIZE, out_size=OUT
    )
    assert touched.key != other.key
    assert (
        build_cache(records, tmp_path / "c", windows=["brain", "vascular"], size=SIZE).data.shape[
            -1
        ]
        == SIZE
    )


def test_corrupt_slice_is_skipped_and_counted(
    records: list[ImageRecord], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ds = pydicom.dcmread(records[2].path)
    ds.PixelData = ds.PixelData[:200]  # a readable header over truncated pixels
    ds.save_as(records[2].path, enforce_file_format=True)
    with caplog.at_level(logging.WARNING, logger="ml.cache"):
        cache = build_cache(
            records, tmp_path / "c", windows=DEFAULT_WINDOWS, size=SIZE, out_size=OUT
        )
    assert len(cache) == 9
    assert records[2].image_id not in cache.image_ids
    assert [s.image_id for s in cache.skipped] == [records[2].image_id]
    assert "less than expected" in cache.skipped[0].reason
    assert "skipped 1 of 10" in caplog.text
    assert SliceCache.open(tmp_path / "c").skipped == cache.skipped
    np.testing.assert_allclose(cache[2][0], expected_pixels(records[3]), atol=0.5 / 255 + 1e-6)


def test_worker_processes_give_the_same_cache(records: list[ImageRecord], tmp_path: Path) -> None:
    serial = build_cache(records, tmp_path / "a", windows=DEFAULT_WINDOWS, size=SIZE, out_size=OUT)
    pooled = build_cache(
        records, tmp_path / "b", windows=DEFAULT_WINDOWS, size=SIZE, out_size=OUT, workers=2
    )
    np.testing.assert_array_equal(np.asarray(serial.data), np.asarray(pooled.data))
    assert pooled.key == serial.key


@pytest.mark.parametrize("world_size", [2, 3])
def test_shards_built_apart_join_into_the_serial_cache(
    records: list[ImageRecord], tmp_path: Path, world_size: int
) -> None:
    ds = pydicom.dcmread(records[3].path)  # one unreadable slice: its reason keeps its place
    ds.PixelData = ds.PixelData[:200]
    ds.save_as(records[3].path, enforce_file_format=True)
    serial = build_cache(records, tmp_path / "a", windows=DEFAULT_WINDOWS, size=SIZE, out_size=OUT)
    encoded = [build_shard(records, tmp_path / "b", windows=DEFAULT_WINDOWS, size=SIZE,
                           out_size=OUT, rank=rank, world_size=world_size,
                           workers=1 if rank == 0 else 0)  # one rank with a process of its own
               for rank in reversed(range(world_size))]  # in any order, as ranks finish
    assert sum(encoded) == len(records)
    joined = join_shards(records, tmp_path / "b", windows=DEFAULT_WINDOWS, size=SIZE,
                         out_size=OUT, world_size=world_size)
    assert (tmp_path / "b" / DATA_FILE).read_bytes() == (tmp_path / "a" / DATA_FILE).read_bytes()
    assert (tmp_path / "b" / INDEX_FILE).read_text() == (tmp_path / "a" / INDEX_FILE).read_text()
    assert joined.key == serial.key and len(joined) == len(records) - 1
    assert [s.image_id for s in joined.skipped] == [records[3].image_id]
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == [INDEX_FILE, DATA_FILE]
    # the joined cache is current: build_cache reuses it rather than decoding again
    assert build_cache(records, tmp_path / "b", windows=DEFAULT_WINDOWS, size=SIZE,
                       out_size=OUT).key == serial.key


def test_a_missing_shard_is_an_error_not_a_short_cache(
    records: list[ImageRecord], tmp_path: Path
) -> None:
    build_shard(records, tmp_path / "c", windows=DEFAULT_WINDOWS, size=SIZE, out_size=OUT,
                rank=0, world_size=2)
    with pytest.raises(OSError):
        join_shards(records, tmp_path / "c", windows=DEFAULT_WINDOWS, size=SIZE, out_size=OUT,
                    world_size=2)
    assert not (tmp_path / "c" / INDEX_FILE).exists()
    with pytest.raises(ValueError, match="rank: must lie in"):
        build_shard(records, tmp_path / "c", windows=DEFAULT_WINDOWS, size=SIZE, rank=2,
                    world_size=2)


def test_neighbors_follow_the_series_and_clamp(records: list[ImageRecord], tmp_path: Path) -> None:
    shuffled = records[::-1]
    cache = build_cache(shuffled, tmp_path / "c", windows=DEFAULT_WINDOWS, size=SIZE, out_size=OUT)
    for series in group_series(shuffled):
        idx = [cache.image_ids.index(r.image_id) for r in series]  # bottom -> top
        assert cache.neighbors(idx[2], 1).tolist() == idx[1:4]
        assert cache.neighbors(idx[0], 2).tolist() == [idx[0], idx[0], idx[0], idx[1], idx[2]]
        assert cache.neighbors(idx[-1], 1).tolist() == [idx[-2], idx[-1], idx[-1]]
        assert {cache.series_uids[j] for j in cache.neighbors(idx[1], 3)} == {series[0].series_uid}


def test_slice_dataset_stacks_context(records: list[ImageRecord], tmp_path: Path) -> None:
    cache = build_cache(records, tmp_path / "c", windows=DEFAULT_WINDOWS, size=SIZE, out_size=OUT)
    flat = SliceDataset(cache)
    x, y = flat[4]
    assert isinstance(x, torch.Tensor) and x.shape == (3, OUT, OUT) and y.shape == (6,)
    deep = SliceDataset(cache, context=1)
    x, y = deep[4]
    assert x.shape == (9, OUT, OUT) and len(deep) == len(cache)
    below, _, above = cache.neighbors(4, 1)
    np.testing.assert_array_equal(x[:3].numpy(), cache[int(below)][0])
    np.testing.assert_array_equal(x[3:6].numpy(), cache[4][0])
    np.testing.assert_array_equal(x[6:].numpy(), cache[int(above)][0])
    batch = next(iter(torch.utils.data.DataLoader(deep, batch_size=4)))
    assert batch[0].shape == (4, 9, OUT, OUT)

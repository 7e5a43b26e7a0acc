"""SeriesDataset: whole series in position order, 2.5D channels as at inference, trainable."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from ml.cache import SliceCache, SliceDataset, build_cache
from ml.inference import stack_context
from ml.phantom import write_dataset
from ml.rsna import group_series, index_images, read_labels
from ml.series import Augmented, SeriesDataset, dataset_for
from ml.train import TrainConfig, pad_series, train
from ml.windowing import DEFAULT_WINDOWS, load_slice, preprocess, windows_by_name

SIZE, OUT, SLICES = 64, 32, 5


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> tuple[SliceCache, list[list[str]]]:
    """A cache built from records in reverse order, and each series' image ids bottom -> top."""
    root = tmp_path_factory.mktemp("series")
    csv_path = write_dataset(root / "data", studies=3, seed=5, slices=SLICES, size=SIZE,
                             positive_fraction=1.0)  # fmt: skip
    records = index_images(root / "data", read_labels(csv_path))[::-1]
    cache = build_cache(records, root / "cache", windows=DEFAULT_WINDOWS, size=SIZE, out_size=OUT)
    return cache, [[r.image_id for r in series] for series in group_series(records)]


def test_items_are_whole_series_in_position_order(data: tuple[SliceCache, list[list[str]]]) -> None:
    cache, series = data
    dataset = SeriesDataset(cache, context=1)
    assert len(dataset) == 3
    by_uid = {cache.series_uids[cache.image_ids.index(ids[0])]: ids for ids in series}
    for i in range(len(dataset)):
        x, y = dataset[i]
        assert x.dtype == torch.float32 and x.shape == (SLICES, 9, OUT, OUT)
        assert y.dtype == torch.float32 and y.shape == (SLICES, 6)
        rows = dataset.slice_indices(i)
        assert [cache.image_ids[r] for r in rows] == by_uid[dataset.series_uids[i]]
        np.testing.assert_array_equal(y.numpy(), cache.labels[rows].astype(np.float32))
        # the centre slice's windows are the middle channels, from the cache
        np.testing.assert_array_equal(x[:, 3:6].numpy(), cache.pixels(rows))
    assert sum(dataset[i][1][:, 0].sum() for i in range(3)) > 0  # bleeds are there to learn


def test_channels_are_laid_out_as_at_inference(data: tuple[SliceCache, list[list[str]]]) -> None:
    cache, _ = data
    dataset = SeriesDataset(cache, context=1)
    x, _ = dataset[1]
    rows = dataset.slice_indices(1)
    volume = torch.from_numpy(cache.pixels(rows))
    torch.testing.assert_close(x, stack_context(volume, range(SLICES), 1), rtol=0, atol=0)
    slices = SliceDataset(cache, context=1)  # the slice models' 2.5D input agrees too
    for t, row in enumerate(rows):
        torch.testing.assert_close(x[t], slices[int(row)][0], rtol=0, atol=0)
    # and the pixels are what the node's preprocessing makes of the DICOM (to uint8 rounding)
    path = next(p for p in Path(cache.cache_dir).parent.rglob(f"{cache.image_ids[rows[0]]}.dcm"))
    _, hu = load_slice(path)
    expected = preprocess(hu, windows_by_name(DEFAULT_WINDOWS), size=SIZE, out_size=OUT)[0]
    np.testing.assert_allclose(x[0, 3:6].numpy(), expected, atol=0.5 / 255 + 1e-6)
    np.testing.assert_array_equal(x[0, :3].numpy(), x[0, 3:6].numpy())  # edge slice repeats


def test_max_slices_keeps_the_centre_with_real_neighbours(
    data: tuple[SliceCache, list[list[str]]],
) -> None:
    cache, _ = data
    full = SeriesDataset(cache, context=1)[0][0]
    cut = SeriesDataset(cache, context=1, max_slices=3)
    x, y = cut[0]
    assert x.shape == (3, 9, OUT, OUT) and y.shape == (3, 6)
    torch.testing.assert_close(x, full[1:4], rtol=0, atol=0)
    with pytest.raises(ValueError, match="max_slices"):
        SeriesDataset(cache, max_slices=0)
    with pytest.raises(ValueError, match="context"):
        SeriesDataset(cache, context=-1)


def test_pad_series_batches_and_dataset_for_picks_by_kind(
    data: tuple[SliceCache, list[list[str]]],
) -> None:
    cache, _ = data
    dataset = dataset_for(cache, "ichnet_seq", 1)
    assert isinstance(dataset, SeriesDataset)
    assert isinstance(dataset_for(cache, "vanilla", 0), SliceDataset)
    x, y, mask = next(iter(DataLoader(dataset, batch_size=2, collate_fn=pad_series)))
    assert x.shape == (2, SLICES, 9, OUT, OUT) and y.shape == (2, SLICES, 6)
    assert mask is not None and bool(mask.all())


def test_augmented_flips_and_shifts_a_series_as_a_whole(
    data: tuple[SliceCache, list[list[str]]],
) -> None:
    cache, _ = data
    plain = SeriesDataset(cache, context=1)
    x0, y0 = plain[2]
    torch.manual_seed(3)
    augmented = Augmented(plain, shift=4)
    seen = set()
    for _ in range(6):
        x, y = augmented[2]
        torch.testing.assert_close(y, y0)
        found = [(flip, dy, dx) for flip in (False, True) for dy in range(-4, 5)
                 for dx in range(-4, 5)
                 if torch.equal(torch.roll(x0.flip(-1) if flip else x0, (dy, dx), (-2, -1)), x)]  # fmt: skip
        assert found, "not a flip and shift of the whole series"
        seen.add(found[0])
    assert len(seen) > 1
    assert torch.equal(Augmented(plain, flip=False)[2][0], x0)
    with pytest.raises(ValueError, match="shift"):
        Augmented(plain, shift=-1)


def test_trains_a_sequence_model(data: tuple[SliceCache, list[list[str]]], tmp_path: Path) -> None:
    cache, _ = data
    torch.set_num_threads(2)
    config = TrainConfig(checkpoint_dir=tmp_path, architecture="ichnet_seq", epochs=1,
                         batch_size=2, input_size=OUT, device="cpu", training_data="unit test")  # fmt: skip
    result = train(config, SeriesDataset(cache, 1), SeriesDataset(cache, 1), progress=False)
    assert result.metrics.n == len(cache)
    assert result.card.architecture == "ichnet_seq" and result.best_checkpoint.is_file()

"""Classifier.predict_series on tiny checkpoints: shapes, calls, batching, bad input."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from ml.checkpoint import ModelCard, save_checkpoint
from ml.errors import SliceError
from ml.inference import Classifier, SeriesPrediction, hierarchical_calls, stack_context
from ml.labels import LABELS
from ml.models import build_model
from ml.windowing import preprocess, windows_by_name

SIZE = 32
WINDOWS = ("brain", "subdural", "bone")


def _checkpoint(tmp_path: Path, architecture: str) -> Path:
    torch.manual_seed(0)
    # "any" always called (threshold 0), every subtype never (1 > any sigmoid output here)
    thresholds = {name: (0.0 if name == "any" else 1.0) for name in LABELS}
    card = ModelCard.new(architecture, windows=WINDOWS, input_size=SIZE, thresholds=thresholds,
                         training_data="random weights; unit test")  # fmt: skip
    model = build_model(architecture, in_channels=card.in_channels, input_size=SIZE)
    path = tmp_path / f"{architecture}.pt"
    save_checkpoint(path, model, card)
    return path


def _slices(n: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.normal(30, 300, (64, 60)).astype(np.float32) for _ in range(n)]


def test_stack_context_orders_and_clamps_neighbours() -> None:
    volume = torch.arange(4, dtype=torch.float32).view(4, 1, 1, 1).repeat(1, 2, 1, 1)  # 2 "windows"
    x = stack_context(volume, [0, 3], context=1)
    assert x.shape == (2, 6, 1, 1)
    assert x[:, :, 0, 0].tolist() == [[0, 0, 0, 0, 1, 1], [2, 2, 3, 3, 3, 3]]
    assert torch.equal(stack_context(volume, [2], context=0), volume[2:3])


@pytest.mark.parametrize("architecture", ["ichnet", "ichnet_seq"])
def test_predict_series_shapes_and_calls(tmp_path: Path, architecture: str) -> None:
    classifier = Classifier.load(_checkpoint(tmp_path, architecture), device="auto")
    assert classifier.device.type == ("cuda" if torch.cuda.is_available() else "cpu")
    prediction = classifier.predict_series(iter(_slices(7)), batch_size=3)  # any iterable
    assert isinstance(prediction, SeriesPrediction)
    assert prediction.per_slice.shape == (7, 6) and prediction.series.shape == (6,)
    assert ((prediction.per_slice > 0) & (prediction.per_slice < 1)).all()
    np.testing.assert_allclose(prediction.series, prediction.per_slice.max(axis=0))
    assert prediction.calls == {name: name == "any" for name in LABELS}
    for j, name in enumerate(LABELS):
        assert prediction.key_slices[name] == int(prediction.per_slice[:, j].argmax())


@pytest.mark.parametrize("architecture", ["ichnet", "ichnet_seq"])
def test_batching_does_not_change_the_result(tmp_path: Path, architecture: str) -> None:
    classifier = Classifier.load(_checkpoint(tmp_path, architecture), device="cpu")
    slices = _slices(6, seed=1)
    one = classifier.predict_series(slices, batch_size=1).per_slice
    all_at_once = classifier.predict_series(slices, batch_size=16).per_slice
    np.testing.assert_allclose(one, all_at_once, atol=1e-5)
    # and it equals the model run by hand on the card's preprocessing
    hu = np.stack(slices)
    volume = torch.from_numpy(preprocess(hu, windows_by_name(WINDOWS), size=512, out_size=SIZE))
    x = stack_context(volume, range(6), context=1)
    with torch.inference_mode():
        logits = classifier.model(x[None])[0] if architecture == "ichnet_seq" else classifier.model(x)
    np.testing.assert_allclose(one, torch.sigmoid(logits).numpy(), atol=1e-5)


def test_single_slice_series(tmp_path: Path) -> None:
    classifier = Classifier.load(_checkpoint(tmp_path, "ichnet_seq"), device="cpu")
    assert classifier.predict_series(_slices(1)).per_slice.shape == (1, 6)


def test_bad_slices_raise_slice_error(tmp_path: Path) -> None:
    classifier = Classifier.load(_checkpoint(tmp_path, "ichnet"), device="cpu")

    def none() -> Iterator[np.ndarray]:
        yield from ()

    with pytest.raises(SliceError, match="no slices"):
        classifier.predict_series(none())
    with pytest.raises(SliceError, match="2-D"):
        classifier.predict_series([np.zeros((2, 8, 8), dtype=np.float32)])
    bad = _slices(2)
    bad[1][3, 3] = np.nan
    with pytest.raises(SliceError, match="slice 1"):
        classifier.predict_series(bad)


def test_a_subtype_is_called_only_with_any() -> None:
    thresholds = {"any": 0.8, "epidural": 0.5, "subdural": 0.3}
    # `any` called: every subtype on its own threshold
    calls, held = hierarchical_calls({"any": 0.9, "epidural": 0.4, "subdural": 0.6}, thresholds)
    assert calls == {"any": True, "epidural": False, "subdural": True} and held == ()
    # `any` below its threshold: nothing called, the subtypes above theirs held back, named
    calls, held = hierarchical_calls({"any": 0.5, "epidural": 0.7, "subdural": 0.3}, thresholds)
    assert calls == {"any": False, "epidural": False, "subdural": False}
    assert held == ("epidural", "subdural")  # at the threshold counts, as for `any`
    # nothing above: nothing held
    assert hierarchical_calls({"any": 0.1, "epidural": 0.1, "subdural": 0.1}, thresholds)[1] == ()
    # a model without `any`: each label alone
    calls, held = hierarchical_calls({"epidural": 0.7, "subdural": 0.1},
                                     {"epidural": 0.5, "subdural": 0.3})
    assert calls == {"epidural": True, "subdural": False} and held == ()

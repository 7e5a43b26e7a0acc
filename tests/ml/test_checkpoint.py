"""Checkpoints: round trip from the card alone, and every kind of damage refused."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from ml.checkpoint import ModelCard, load_checkpoint, save_checkpoint, weights_sha256
from ml.errors import ModelError
from ml.labels import LABELS
from ml.models import build_model

WINDOWS = ("brain", "subdural", "bone")


def _card(architecture: str = "ichnet", **changes: Any) -> ModelCard:
    return ModelCard.new(architecture, windows=WINDOWS, input_size=64,
                         training_data="unit test; NOT FOR CLINICAL USE", **changes)  # fmt: skip


def _saved(tmp_path: Path, architecture: str = "ichnet") -> tuple[Path, nn.Module, ModelCard]:
    torch.manual_seed(0)
    card = _card(architecture)
    model = build_model(architecture, in_channels=card.in_channels, input_size=64)
    path = tmp_path / "model.pt"
    return path, model, save_checkpoint(path, model, card)


def _rewrite(path: Path, change: Any) -> None:
    payload = torch.load(path, weights_only=True)
    change(payload)
    torch.save(payload, path)


@pytest.mark.parametrize("architecture", ["ichnet", "ichnet_seq", "vanilla"])
def test_round_trip_gives_equal_outputs(tmp_path: Path, architecture: str) -> None:
    path, model, card = _saved(tmp_path, architecture)
    loaded, loaded_card = load_checkpoint(path)
    assert loaded_card == card
    assert not loaded.training
    shape = (1, 3, card.in_channels, 64, 64) if architecture == "ichnet_seq" else (2, card.in_channels, 64, 64)
    x = torch.rand(shape)
    model.eval()
    with torch.inference_mode():
        assert torch.equal(model(x), loaded(x))


def test_card_is_complete_and_readable_by_people(tmp_path: Path) -> None:
    path, model, card = _saved(tmp_path)
    assert card.sha256 == weights_sha256(model.state_dict())
    assert card.code_version.startswith("ichtriage ")
    assert card.created_at and card.labels == LABELS and card.num_labels == 6
    assert card.in_channels == 9 and card.context == 1  # ichnet: 3 windows x 3 slices
    sidecar = json.loads((tmp_path / "model.pt.json").read_text())
    assert sidecar == card.to_dict()
    assert sidecar["windows"] == list(WINDOWS) and sidecar["thresholds"]["any"] == 0.5


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="not found"):
        load_checkpoint(tmp_path / "none.pt")


def test_truncated_file(tmp_path: Path) -> None:
    path, _, _ = _saved(tmp_path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelError, match="truncated"):
        load_checkpoint(path)


@pytest.mark.parametrize("text", ["this is not a model\n", "a\nb\nc\n" * 100])
def test_a_text_file_is_not_a_checkpoint(tmp_path: Path, text: str) -> None:
    path = tmp_path / "bogus.pt"
    path.write_text(text)
    with pytest.raises(ModelError, match="not a checkpoint"):
        load_checkpoint(path)


def test_tampered_weights(tmp_path: Path) -> None:
    path, _, _ = _saved(tmp_path)
    _rewrite(path, lambda p: p["state_dict"]["fc.bias"].add_(0.01))
    with pytest.raises(ModelError, match="sha256"):
        load_checkpoint(path)


def test_label_order_mismatch(tmp_path: Path) -> None:
    path, _, _ = _saved(tmp_path)
    swapped = [LABELS[0], LABELS[2], LABELS[1], *LABELS[3:]]
    _rewrite(path, lambda p: p["card"].update(labels=swapped))
    with pytest.raises(ModelError, match="label order"):
        load_checkpoint(path)


def test_unknown_architecture(tmp_path: Path) -> None:
    path, _, _ = _saved(tmp_path)
    _rewrite(path, lambda p: p["card"].update(architecture="lenet"))
    with pytest.raises(ModelError, match="unknown architecture"):
        load_checkpoint(path)


def test_weights_that_do_not_fit_the_card(tmp_path: Path) -> None:
    path, _, _ = _saved(tmp_path)

    def resize(payload: dict[str, Any]) -> None:  # a consistent file whose card lies
        payload["card"].update(in_channels=3, context=0)
        payload["card"]["sha256"] = weights_sha256(payload["state_dict"])

    _rewrite(path, resize)
    with pytest.raises(ModelError, match="do not fit"):
        load_checkpoint(path)


def test_not_a_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "plain.pt"
    torch.save(build_model("ichnet").state_dict(), path)
    with pytest.raises(ModelError, match="format"):
        load_checkpoint(path)


def test_save_refuses_a_card_that_does_not_fit(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="do not fit"):
        save_checkpoint(tmp_path / "x.pt", build_model("vanilla", input_size=64), _card("ichnet"))
    assert not (tmp_path / "x.pt").exists()


def test_card_checks_its_fields() -> None:
    with pytest.raises(ValueError, match="in_channels"):
        ModelCard(architecture="ichnet", labels=LABELS, in_channels=3, input_size=64,
                  windows=WINDOWS, context=1, thresholds=dict.fromkeys(LABELS, 0.5),
                  training_data="x")  # fmt: skip
    with pytest.raises(ValueError, match="thresholds"):
        _card(thresholds={"any": 0.5})
    with pytest.raises(ValueError, match="thresholds"):
        _card(thresholds=dict.fromkeys(LABELS, 1.5))


@pytest.mark.parametrize(("content", "says"), [
    (lambda p: p.write_bytes(bytes(range(256)) * 8), "not a checkpoint (not a PyTorch zip"),
    (lambda p: torch.save({"model": torch.nn.Linear(2, 2)}, p), "holds objects other than"),
    (lambda p: p.write_bytes(b""), "the file is empty"),
], ids=["random-bytes", "pickled-module", "empty"])
def test_an_unreadable_file_is_named_in_the_nodes_words(tmp_path: Path, content: object,
                                                         says: str) -> None:
    path = tmp_path / "corrupt.pt"
    content(path)  # type: ignore[operator]
    with pytest.raises(ModelError, match=re.escape(says)) as raised:
        load_checkpoint(path)
    assert "weights_only` set to `False`" not in str(raised.value)
    assert "file an issue" not in str(raised.value)


def test_a_field_of_view_is_carded_and_a_card_without_one_is_written_as_before() -> None:
    plain = ModelCard.new("ichnet", windows=("brain", "subdural", "bone"), training_data="t")
    assert "field_of_view_mm" not in plain.to_dict()
    assert ModelCard.from_dict(plain.to_dict()).field_of_view_mm is None
    carded = ModelCard.new("ichnet", windows=("brain", "subdural", "bone"), training_data="t",
                           field_of_view_mm=240.0)
    assert ModelCard.from_dict(json.loads(json.dumps(carded.to_dict()))).field_of_view_mm == 240.0
    for wrong in (0.0, 20.0, 5000.0):
        with pytest.raises(ModelError, match="field_of_view_mm"):
            ModelCard.from_dict({**carded.to_dict(), "field_of_view_mm": wrong})


def test_the_classifier_fits_the_card_s_field_of_view_by_the_series_pixel_spacing() -> None:
    from ml.inference import Classifier
    from ml.windowing import fit_shape, preprocess, windows_by_name

    card = ModelCard.new("ichnet", windows=("brain", "subdural", "bone"), training_data="t",
                         context=0, input_size=64, field_of_view_mm=240.0)
    model = build_model("ichnet", num_labels=len(LABELS), in_channels=3, input_size=64)
    classifier = Classifier(model, card, torch.device("cpu"))
    hu = torch.linspace(-1024, 200, 512 * 512).reshape(512, 512).numpy()
    windows = windows_by_name(card.windows)
    for spacing in ((0.7, 0.7), (0.4, 0.5)):
        got = classifier.preprocess([hu], pixel_spacing=spacing).numpy()
        expected = preprocess(hu[None], windows, size=fit_shape(spacing, 240.0), out_size=64)
        assert classifier.fit_shape(spacing) == fit_shape(spacing, 240.0) != (512, 512)
        assert got.tolist() == expected.tolist()
    unknown = classifier.preprocess([hu]).numpy()  # no spacing: 512 pixels, as before
    assert unknown.tolist() == preprocess(hu[None], windows, size=512, out_size=64).tolist()

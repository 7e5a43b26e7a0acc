"""Grad-CAM: the same map as a hook-based Grad-CAM over the whole model (an independent
computation), on ichnet and ichnet_seq; on the shipped model and a phantom bleed, the map
is hottest on the bleed, and back on the slice's own grid."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ml.checkpoint import ModelCard, save_checkpoint
from ml.errors import ModelError
from ml.inference import Classifier, stack_context
from ml.labels import LABELS
from ml.models import SeriesModel, build_model
from ml.phantom import write_series
from ml.saliency import grad_cam, heat_on_slice
from ml.shipped import shipped_checkpoint
from ml.windowing import load_slice


def _classifier(tmp_path: Path, architecture: str) -> Classifier:
    torch.manual_seed(3)
    card = ModelCard.new(architecture, windows=("brain", "subdural", "bone"), input_size=64,
                         thresholds=dict.fromkeys(LABELS, 0.5), training_data="unit test")
    model = build_model(architecture, in_channels=card.in_channels, input_size=64)
    path = tmp_path / f"{architecture}.pt"
    save_checkpoint(path, model, card)
    return Classifier.load(path, device="cpu")


def _hooked_cam(classifier: Classifier, volume: torch.Tensor, index: int, j: int) -> np.ndarray:
    """Textbook Grad-CAM: a forward hook on the encoder's last stage, the whole series
    through the model in one pass with gradients."""
    model = classifier.model
    encoder = model.encoder if isinstance(model, SeriesModel) else model
    captured: list[torch.Tensor] = []
    handle = encoder.stages.register_forward_hook(lambda _m, _i, out: captured.append(out))
    try:
        x = stack_context(volume, range(volume.shape[0]), classifier.card.context)
        x.requires_grad_(True)
        if isinstance(model, SeriesModel):
            logits = model(x[None])[0]
        else:
            logits = model(x)
        (grads,) = torch.autograd.grad(logits[index, j], captured[0])
    finally:
        handle.remove()
    acts, g = captured[0][index:index + 1].detach(), grads[index:index + 1]
    cam = torch.relu((g.mean(dim=(2, 3), keepdim=True) * acts).sum(dim=1, keepdim=True))
    cam = F.interpolate(cam, size=tuple(volume.shape[-2:]), mode="bilinear",
                        align_corners=False)[0, 0]
    return (cam / cam.max()).numpy()


@pytest.mark.parametrize("architecture", ["ichnet", "ichnet_seq"])
def test_the_same_map_as_a_hooked_grad_cam(tmp_path: Path, architecture: str) -> None:
    classifier = _classifier(tmp_path, architecture)
    rng = np.random.default_rng(1)
    slices = [rng.normal(40, 200, (80, 72)).astype(np.float32) for _ in range(5)]
    volume = classifier.preprocess(slices)
    for label in ("any", "subdural"):
        ours = grad_cam(classifier, volume, 2, label)
        theirs = _hooked_cam(classifier, volume, 2, LABELS.index(label))
        assert ours.shape == (64, 64) and ours.max() == pytest.approx(1.0)
        np.testing.assert_allclose(ours, theirs, atol=1e-4)
    with pytest.raises(ValueError):
        grad_cam(classifier, volume, 5, "any")
    with pytest.raises(ValueError):
        grad_cam(classifier, volume, 0, "tumour")


def test_other_architectures_are_refused(tmp_path: Path) -> None:
    classifier = _classifier(tmp_path, "vanilla")
    volume = classifier.preprocess([np.zeros((64, 64), np.float32)] * 3)
    with pytest.raises(ModelError):
        grad_cam(classifier, volume, 1, "any")


def test_the_shipped_model_looks_at_the_bleed(tmp_path: Path) -> None:
    """The same phantom with and without a subdural bleed differ only where the bleed is:
    there the map is much hotter than over the rest of the head, and the clean twin's map is
    cool at the same place (the bleed, not the place, lights it)."""
    bleed = write_series(tmp_path / "bleed", seed=901, slices=24, size=512,
                         subtypes=("subdural",))
    clean = write_series(tmp_path / "clean", seed=901, slices=24, size=512)
    slices = [load_slice(p)[1][0] for p in bleed.paths]
    classifier = Classifier.load(shipped_checkpoint(), device="cpu")
    index = int(np.flatnonzero(bleed.labels[:, LABELS.index("subdural")])[2])
    lesion = np.abs(slices[index] - load_slice(clean.paths[index])[1][0]) > 20
    head = slices[index] > -500
    assert lesion.sum() > 500 and (head & ~lesion).sum() > 10 * lesion.sum()
    heat = heat_on_slice(classifier, slices, index, "subdural")
    assert heat.shape == slices[index].shape and 0.0 <= heat.min() and heat.max() <= 1.0
    # Measured: 1.90x for the randomized model shipped in session 8, 2.61x for the classic one
    # before it (whose maps were more focused); 1.5x leaves room for rounding across CPUs.
    assert heat[lesion].mean() > 1.5 * heat[head & ~lesion].mean()
    twin = heat_on_slice(classifier, [load_slice(p)[1][0] for p in clean.paths], index,
                         "subdural")
    assert twin[lesion].mean() < 0.5 * heat[lesion].mean()

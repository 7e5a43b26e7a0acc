"""Where the model looked: Grad-CAM (Selvaraju et al., ICCV 2017) on the last convolution of
the slice encoder, for one slice and one label.

The heat map weighs each channel of the encoder's last stage by the mean gradient of the
label's logit with respect to it, keeps the positive part and scales it to [0, 1]. For the
sequence model (`ichnet_seq`) the logit is the slice's logit after the GRU over the whole
series: the other slices' features are computed without gradients, so the map shows what
in this slice moved its own score. No hooks are set on the model: a model shared with a
worker would see them; the activations are taken by calling the encoder's parts directly.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ml.errors import ModelError
from ml.inference import Classifier, stack_context
from ml.models import ICHNet, SeriesModel
from ml.windowing import resize, unfit_from_size


def grad_cam(classifier: Classifier, volume: torch.Tensor, index: int, label: str, *,
             batch_size: int = 16) -> np.ndarray:
    """(S, S) heat map in [0, 1] at the model's input size for slice `index` of `volume`
    ((N, C, S, S), `Classifier.preprocess` of the series in slice order)."""
    if label not in classifier.card.labels:
        raise ValueError(f"label: {label!r} is not one of {', '.join(classifier.card.labels)}")
    if not 0 <= index < volume.shape[0]:
        raise ValueError(f"index: {index} is outside 0-{volume.shape[0] - 1}")
    model = classifier.model
    encoder = model.encoder if isinstance(model, SeriesModel) else model
    if not isinstance(encoder, ICHNet):
        raise ModelError(f"Grad-CAM needs an ichnet encoder, not {classifier.card.architecture}")
    j = list(classifier.card.labels).index(label)
    context, device = classifier.card.context, classifier.device
    x = stack_context(volume, [index], context).to(device).requires_grad_(True)
    with torch.enable_grad():
        activations = encoder.stages(encoder.stem(x))  # (1, K, h, w)
        features = activations.mean(dim=(2, 3))
        if isinstance(model, SeriesModel):
            others = _features(classifier, volume, batch_size)
            sequence = torch.cat([others[:index], features, others[index + 1:]])[None]
            logit = model.sequence_logits(sequence)[0, index, j]
        else:
            logit = encoder.fc(encoder.dropout(features))[0, j]
        (gradients,) = torch.autograd.grad(logit, activations)
    weights = gradients.mean(dim=(2, 3), keepdim=True)
    cam = torch.relu((weights * activations.detach()).sum(dim=1, keepdim=True))
    cam = F.interpolate(cam, size=tuple(volume.shape[-2:]), mode="bilinear",
                        align_corners=False)[0, 0]
    peak = float(cam.max())
    return (cam / peak if peak > 0 else cam).cpu().numpy().astype(np.float32)


@torch.inference_mode()
def _features(classifier: Classifier, volume: torch.Tensor, batch_size: int) -> torch.Tensor:
    model = classifier.model
    assert isinstance(model, SeriesModel)
    parts = []
    for start in range(0, volume.shape[0], batch_size):
        x = stack_context(volume, range(start, min(volume.shape[0], start + batch_size)),
                          classifier.card.context).to(classifier.device)
        parts.append(model.slice_features(x))
    return torch.cat(parts).clone()


def heat_on_slice(classifier: Classifier, slices: Sequence[np.ndarray], index: int,
                  label: str, *, pixel_spacing: Sequence[float] | None = None) -> np.ndarray:
    """Grad-CAM of slice `index` of a series (HU arrays in slice order, PixelSpacing
    `pixel_spacing` in mm) on that slice's own (rows, cols) grid: the inverse of the model's
    fit and resize."""
    volume = classifier.preprocess(slices, pixel_spacing=pixel_spacing)
    heat = grad_cam(classifier, volume, index, label)
    rows, cols = np.asarray(slices[index]).shape
    fit = classifier.fit_shape(pixel_spacing)
    if heat.shape[-2:] != fit:
        heat = resize(heat, fit)
    return np.clip(unfit_from_size(heat, rows, cols), 0.0, 1.0)


def overlay(gray: np.ndarray, heat: np.ndarray) -> np.ndarray:
    """A windowed slice (values in [0, 1]) in gray with the heat map over it, red (warm) to
    yellow (hot), as (rows, cols, 3) uint8; below a fifth of the peak the slice shows as is."""
    if gray.shape != heat.shape:
        raise ValueError(f"gray {gray.shape} and heat {heat.shape} differ in shape")
    base = np.clip(gray, 0.0, 1.0)[..., None] * 255.0
    color = np.stack([np.full_like(heat, 255.0), 255.0 * heat, np.zeros_like(heat)], axis=-1)
    alpha = np.where(heat > 0.2, 0.5 * heat, 0.0)[..., None]
    return np.rint(base * (1 - alpha) + color * alpha).astype(np.uint8)

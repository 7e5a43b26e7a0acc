"""Training augmentation of each batch: what a scanner, a protocol and a head change.

`BatchAugment` changes a training batch of windowed inputs (slices (B, C, S, S) or series
(B, T, C, S, S), channels offset-major as `ml.inference.stack_context` builds them), each item
by its own random HU shift and scale, window jitter, left-right flip, small affine transform
with an elastic wobble, noise, blur and down- and up-resize. A series is changed as a whole.
Batches are changed at once (per-item parameters as tensors): item by item cost 7 times more.

Window-space values are mapped back to HU with each channel's window, changed, and windowed
again, so an HU shift moves the brain window 35 times more than the bone window, as it would on
a scanner. Values the cache clipped stay clipped. Draws come from torch's global generator,
which `ml.train.train` seeds and whose state `--resume` restores, so runs repeat.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch.nn import functional as F

from ml.windowing import Window, windows_by_name


@dataclass(frozen=True)
class AugmentConfig:
    """Ranges of each change (uniform draws), and how often the optional ones happen."""

    hu_shift: float = 10.0  # +- HU added to the whole image
    hu_scale: float = 0.08  # +- fraction: HU * (1 + s)
    window_jitter: float = 0.06  # +- fraction of each window's width: centre and width
    flip: bool = True  # left-right, half of the items
    rotate_deg: float = 15.0
    zoom: float = 0.15  # +- fraction
    translate: float = 0.06  # +- fraction of the side
    elastic: float = 0.015  # displacement amplitude, fraction of the side, on a 4 x 4 grid
    noise_hu: float = 8.0  # standard deviation drawn in [0, noise_hu]
    blur: float = 0.3  # probability of a 3 x 3 Gaussian blur
    resize: float = 0.3  # probability of a down- and up-resize
    min_resize: float = 0.5  # smallest down-scale factor

    def __post_init__(self) -> None:
        for name in ("hu_shift", "hu_scale", "window_jitter", "rotate_deg", "zoom", "translate",
                     "elastic", "noise_hu"):  # fmt: skip
            if getattr(self, name) < 0:
                raise ValueError(f"{name}: must be >= 0, got {getattr(self, name)}")
        for name in ("blur", "resize"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name}: must lie in [0, 1], got {getattr(self, name)}")
        if not 0 < self.min_resize <= 1:
            raise ValueError(f"min_resize: must lie in (0, 1], got {self.min_resize}")


class BatchAugment:
    """Callable on a training batch x: (B, C, S, S) slices or (B, T, C, S, S) series."""

    def __init__(self, windows: Sequence[str | Window], config: AugmentConfig | None = None) -> None:
        self.windows = windows_by_name([w if isinstance(w, str) else w.name for w in windows])
        self.config = config or AugmentConfig()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 4:
            return augment(x[:, None], self.windows, self.config)[:, 0]
        return augment(x, self.windows, self.config)


def _uniform(n: int, half: float) -> torch.Tensor:
    return (torch.rand(n) * 2 - 1) * half


def _chance(n: int, p: float) -> torch.Tensor:
    return torch.rand(n) < p


def augment(x: torch.Tensor, windows: Sequence[Window], config: AugmentConfig) -> torch.Tensor:
    """(N, T, C, S, S) window-space frames; item n's T frames are changed alike."""
    if x.dim() != 5 or x.shape[2] % len(windows):
        raise ValueError(f"x: need (N, T, C, S, S) with C a multiple of {len(windows)}, "
                         f"got {tuple(x.shape)}")  # fmt: skip
    n, t, c, side = x.shape[0], x.shape[1], x.shape[2], x.shape[-1]
    x = _intensity(x.float(), windows, config)
    if config.flip:
        chosen = torch.nonzero(_chance(n, 0.5)).flatten()
        x[chosen] = x[chosen].flip(-1)
    flat = _geometry(x.reshape(n * t, c, side, side), n, t, config)
    if config.blur:
        chosen = _frames(_chance(n, config.blur), t)
        if chosen.numel():
            flat[chosen] = _blur(flat[chosen])
    if config.resize:  # one factor per batch: a call per item costs 10 times more
        chosen = _frames(_chance(n, config.resize), t)
        factor = config.min_resize + float(torch.rand(())) * (1 - config.min_resize)
        if chosen.numel():
            flat[chosen] = _resize(flat[chosen], factor)
    return flat.reshape(n, t, c, side, side).clamp_(0, 1)


def _frames(items: torch.Tensor, t: int) -> torch.Tensor:
    """Rows of the (N * T) frame stack that belong to the chosen items."""
    chosen = torch.nonzero(items).flatten()
    return (chosen[:, None] * t + torch.arange(t)[None]).flatten()


def _per_window(values: torch.Tensor, channels: int) -> torch.Tensor:
    """(N, W) per-window values to (N, 1, C, 1, 1) per channel (offset-major layout)."""
    return values.repeat(1, channels // values.shape[1])[:, None, :, None, None]


def _intensity(x: torch.Tensor, windows: Sequence[Window], config: AugmentConfig) -> torch.Tensor:
    """HU shift and scale and noise in HU, then each window jittered; back to window space."""
    n, channels, k = x.shape[0], x.shape[2], len(windows)
    low = _per_window(torch.tensor([[w.low for w in windows]]).expand(n, k), channels)
    width = _per_window(torch.tensor([[w.width for w in windows]]).expand(n, k), channels)
    scale = (1 + _uniform(n, config.hu_scale))[:, None, None, None, None]
    shift = _uniform(n, config.hu_shift)[:, None, None, None, None]
    new_width = width * _per_window(1 + _uniform(n * k, config.window_jitter).reshape(n, k), channels)
    new_low = low + width * _per_window(_uniform(n * k, config.window_jitter).reshape(n, k), channels)
    # one affine map per channel: window -> HU -> scaled and shifted HU -> jittered window
    gain = width * scale / new_width
    offset = (low * scale + shift - new_low) / new_width
    out = torch.addcmul(offset, x, gain)
    # noise is one HU field per slice, seen through each window: (N, T, slices, 1, S, S)
    t, side = x.shape[1], x.shape[-1]
    sigma = torch.rand(n) * config.noise_hu
    noise = torch.randn(n, t, channels // k, 1, side, side) * sigma[:, None, None, None, None, None]
    out = out.view(n, t, channels // k, k, side, side)
    out.add_(noise / new_width.view(n, 1, channels // k, k, 1, 1))
    return out.view(n, t, channels, side, side).clamp_(0, 1)


def _geometry(flat: torch.Tensor, n: int, t: int, config: AugmentConfig) -> torch.Tensor:
    """Per item one rotation, zoom, translation and elastic wobble, for all its frames."""
    angle = torch.deg2rad(_uniform(n, config.rotate_deg))
    zoom = 1 + _uniform(n, config.zoom)
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    shift = _uniform(2 * n, config.translate * 2).reshape(n, 2)
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1),
                         torch.stack([sin, cos, shift[:, 1]], 1)], 1)  # fmt: skip
    side = flat.shape[-1]
    grid = F.affine_grid(theta, [n, 1, side, side], align_corners=False)
    if config.elastic:
        coarse = _uniform(n * 32, config.elastic * 2).reshape(n, 2, 4, 4)
        wobble = F.interpolate(coarse, size=(side, side), mode="bilinear", align_corners=False)
        grid = grid + wobble.permute(0, 2, 3, 1)
    grid = grid.repeat_interleave(t, dim=0)
    return F.grid_sample(flat, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def _blur(x: torch.Tensor) -> torch.Tensor:
    kernel = torch.tensor([1.0, 2.0, 1.0])
    kernel = (kernel[:, None] * kernel[None, :]) / 16
    weight = kernel.expand(x.shape[1], 1, 3, 3).to(x.dtype)
    return F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), weight, groups=x.shape[1])


def _resize(x: torch.Tensor, factor: float) -> torch.Tensor:
    side = x.shape[-1]
    small = max(8, round(side * factor))
    down = F.interpolate(x, size=(small, small), mode="area")
    return F.interpolate(down, size=(side, side), mode="bilinear", align_corners=False)

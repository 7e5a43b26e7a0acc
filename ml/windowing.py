"""CT slices to model input: Hounsfield units, display windows, size, resize.

The numpy path (`preprocess`) and the torch path (`preprocess_torch`) compute the same thing with
the same formulas, so a model trained on one can be served with the other.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError

from ml.errors import SliceError

if TYPE_CHECKING:  # torch is imported lazily: the numpy path must not pay for it
    import torch

AIR_HU = -1024.0
FIT_SIZE = 512  # without a field of view, slices are centre padded/cropped to this (RSNA matrix)
# PixelSpacing (mm) outside this range is taken as unknown: the slice is fitted by pixels
PLAUSIBLE_PIXEL_MM = (0.05, 5.0)


@dataclass(frozen=True)
class Window:
    """A display window: HU in [center - width/2, center + width/2] maps linearly to [0, 1]."""

    name: str
    center: float
    width: float

    def __post_init__(self) -> None:
        if not self.width > 0:
            raise ValueError(f"window {self.name!r}: width must be > 0, got {self.width}")

    @property
    def low(self) -> float:
        return self.center - self.width / 2


BRAIN = Window("brain", 40, 80)
SUBDURAL = Window("subdural", 80, 200)
BONE = Window("bone", 600, 2800)
SOFT_TISSUE = Window("soft_tissue", 40, 380)
# The seed study named a "vascular" window without numbers. We take the usual CT-angiography
# viewer preset (L300/W600, e.g. the "CT Angio" entry of common PACS preset lists; Radiopaedia's
# "Windowing (CT)" gives L170/W600 for CTA). On non-contrast head CT it separates acute blood
# (50-90 HU, near black) from calcification and bone, which the brain window saturates.
VASCULAR = Window("vascular", 300, 600)

WINDOWS: dict[str, Window] = {w.name: w for w in (BRAIN, SUBDURAL, BONE, SOFT_TISSUE, VASCULAR)}
DEFAULT_WINDOWS: tuple[str, str, str] = ("brain", "subdural", "bone")
STUDY_WINDOWS: tuple[str, str, str] = ("brain", "subdural", "vascular")


def windows_by_name(names: Sequence[str]) -> tuple[Window, ...]:
    """The windows named, in order; ValueError naming the first unknown name."""
    if isinstance(names, str):
        raise TypeError("names must be a sequence of window names, not one string")
    for name in names:
        if name not in WINDOWS:
            raise ValueError(f"unknown window {name!r}; known: {', '.join(WINDOWS)}")
    return tuple(WINDOWS[name] for name in names)


# --- DICOM to Hounsfield units ----------------------------------------------------------------

_DECODE_ERRORS = (
    ValueError,
    RuntimeError,
    NotImplementedError,
    AttributeError,
    KeyError,
    TypeError,
)


def to_hounsfield(ds: pydicom.Dataset) -> np.ndarray:
    """Stored pixel values to HU, float32 of shape (frames, rows, cols).

    Applies the Modality LUT (PS3.3 C.11.1: RescaleSlope/Intercept, per frame from the Pixel
    Value Transformation functional group for multi-frame images, C.7.6.16.2.9), maps Pixel
    Padding Value (and Range Limit, C.7.5.1.1.2) pixels to air, and undoes the RSNA 2019 quirk of
    12-bit unsigned slices stored with a wrapped offset.
    """
    if "PixelData" not in ds:
        raise SliceError("no Pixel Data (7FE0,0010) in the dataset")
    photometric = str(ds.get("PhotometricInterpretation", "")).strip()
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise SliceError(f"photometric interpretation {photometric!r} is not a grayscale CT image")
    if int(ds.get("SamplesPerPixel", 1)) != 1:
        raise SliceError(f"{ds.SamplesPerPixel} samples per pixel; CT has 1")
    try:
        rows, cols = int(ds.Rows), int(ds.Columns)
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        stored = ds.pixel_array
    except _DECODE_ERRORS as exc:
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        name = getattr(syntax, "name", syntax)
        raise SliceError(f"pixel data cannot be decoded ({name}): {exc}") from exc
    if stored.size != frames * rows * cols:
        raise SliceError(f"decoded {stored.shape}, expected {frames} x {rows} x {cols}")
    stored = stored.reshape(frames, rows, cols)

    slope, intercept = _rescale(ds, frames)
    padding = _padding_mask(ds, stored)
    hu = stored.astype(np.float32)
    if int(ds.get("BitsStored", 16)) == 12 and int(ds.get("PixelRepresentation", 0)) == 0:
        _fix_rsna_offset(hu, intercept)
    if np.any(slope != 1):
        hu *= slope[:, None, None]
    hu += intercept[:, None, None]
    if padding is not None:
        hu[padding] = AIR_HU
    return hu


def _rescale(ds: pydicom.Dataset, frames: int) -> tuple[np.ndarray, np.ndarray]:
    """(slope, intercept), each float32 of shape (frames,)."""
    slope = np.full(frames, float(ds.get("RescaleSlope", 1.0) or 1.0), dtype=np.float32)
    intercept = np.full(frames, float(ds.get("RescaleIntercept", 0.0) or 0.0), dtype=np.float32)
    shared = _pixel_transform(ds.get("SharedFunctionalGroupsSequence"), 0)
    if shared is not None:
        slope[:], intercept[:] = shared
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if per_frame is not None:
        for i in range(min(frames, len(per_frame))):
            values = _pixel_transform(per_frame, i)
            if values is not None:
                slope[i], intercept[i] = values
    return slope, intercept


def _pixel_transform(
    groups: Sequence[pydicom.Dataset] | None, i: int
) -> tuple[float, float] | None:
    if not groups or len(groups) <= i:
        return None
    transform = groups[i].get("PixelValueTransformationSequence")
    if not transform:
        return None
    item = transform[0]
    return float(item.get("RescaleSlope", 1.0)), float(item.get("RescaleIntercept", 0.0))


def _padding_mask(ds: pydicom.Dataset, stored: np.ndarray) -> np.ndarray | None:
    if ds.get("PixelPaddingValue") is None:
        return None
    low = high = int(ds.PixelPaddingValue)
    if ds.get("PixelPaddingRangeLimit") is not None:
        limit = int(ds.PixelPaddingRangeLimit)
        low, high = min(low, limit), max(low, limit)
    if low == high:
        mask = stored == low
    else:
        mask = (stored >= low) & (stored <= high)
    return mask if mask.any() else None


def _fix_rsna_offset(stored: np.ndarray, intercept: np.ndarray) -> None:
    """Some RSNA 2019 slices store HU + 1000 modulo 4096 with a wrong intercept; undo in place."""
    wrong = intercept > -100
    if not wrong.any():
        return
    frames = stored if wrong.all() else stored[wrong]
    frames += 1000
    frames[frames >= 4096] -= 4096
    if not wrong.all():
        stored[wrong] = frames
    intercept[wrong] = -1000


def load_slice(path: str | os.PathLike[str]) -> tuple[pydicom.Dataset, np.ndarray]:
    """Read one DICOM file: (dataset, HU of shape (frames, rows, cols))."""
    try:
        ds = pydicom.dcmread(path)
    except (InvalidDicomError, OSError, EOFError, ValueError, KeyError, TypeError) as exc:
        raise SliceError(f"{os.fspath(path)}: not a readable DICOM file: {exc}") from exc
    try:
        return ds, to_hounsfield(ds)
    except SliceError as exc:
        raise SliceError(f"{os.fspath(path)}: {exc}") from exc


# --- windows, size, resize (numpy) -------------------------------------------------------------


def apply_window(hu: np.ndarray, window: Window) -> np.ndarray:
    """HU to [0, 1] through one window, float32, same shape."""
    out = np.subtract(hu, np.float32(window.low), dtype=np.float32)
    np.divide(out, np.float32(window.width), out=out)
    return np.clip(out, 0.0, 1.0, out=out)


def stack_windows(hu: np.ndarray, windows: Sequence[Window]) -> np.ndarray:
    """(..., H, W) HU to (..., C, H, W) float32 in [0, 1], one channel per window, in order."""
    if not windows:
        raise ValueError("windows must name at least one window")
    low, width = _window_arrays(windows)
    out = np.subtract(hu[..., None, :, :], low, dtype=np.float32)
    np.divide(out, width, out=out)
    return np.clip(out, 0.0, 1.0, out=out)


def _window_arrays(windows: Sequence[Window]) -> tuple[np.ndarray, np.ndarray]:
    low = np.array([w.low for w in windows], dtype=np.float32)[:, None, None]
    width = np.array([w.width for w in windows], dtype=np.float32)[:, None, None]
    return low, width


def _fit_spans(n: int, size: int) -> tuple[slice, slice]:
    """(source, destination) spans that keep pixel n // 2 at size // 2."""
    offset = size // 2 - n // 2
    start, stop = max(0, -offset), min(n, size - offset)
    return slice(start, stop), slice(start + offset, stop + offset)


def fit_shape(pixel_spacing: Sequence[float] | None,
              field_of_view_mm: float | None) -> tuple[int, int]:
    """(rows, cols) of the slice's own pixels that cover a square field of view.

    `pixel_spacing` is PixelSpacing (PS3.3 C.7.6.2.1.1: row spacing, column spacing, mm);
    `field_of_view_mm` is the side of the square, centred on the slice, that a model sees
    (`ModelCard.field_of_view_mm`). Fitting that many pixels and resizing them to the model's
    input gives every slice the same millimetres per input pixel, whatever the scanner's
    reconstruction diameter and matrix. Without a field of view, or without a plausible
    spacing (`PLAUSIBLE_PIXEL_MM`), the fit is FIT_SIZE pixels on each side, as models
    carded without a field of view were trained.
    """
    if field_of_view_mm is None or pixel_spacing is None or len(pixel_spacing) != 2:
        return FIT_SIZE, FIT_SIZE
    low, high = PLAUSIBLE_PIXEL_MM
    row_mm, col_mm = (float(v) for v in pixel_spacing)
    if not (low <= row_mm <= high and low <= col_mm <= high):
        return FIT_SIZE, FIT_SIZE
    return max(1, round(field_of_view_mm / row_mm)), max(1, round(field_of_view_mm / col_mm))


def _shape(size: int | tuple[int, int]) -> tuple[int, int]:
    rows, cols = (size, size) if isinstance(size, int) else size
    if rows < 1 or cols < 1:
        raise ValueError(f"size must be >= 1, got {size}")
    return rows, cols


def fit_to_size(img: np.ndarray, size: int | tuple[int, int], *,
                fill: float = AIR_HU) -> np.ndarray:
    """Center-pad with `fill` and/or center-crop the last two axes to (size, size), or to
    (rows, cols) when `size` is a pair (see `fit_shape`).

    The centre pixel (rows // 2, cols // 2) lands on (size // 2, size // 2), so a centred head
    stays centred whatever the matrix; each axis is padded or cropped on its own.
    """
    size_r, size_c = _shape(size)
    rows, cols = img.shape[-2:]
    src_r, dst_r = _fit_spans(rows, size_r)
    src_c, dst_c = _fit_spans(cols, size_c)
    out = np.full((*img.shape[:-2], size_r, size_c), fill, dtype=img.dtype)
    out[..., dst_r, dst_c] = img[..., src_r, src_c]
    return out


def unfit_from_size(img: np.ndarray, rows: int, cols: int, *, fill: float = 0.0) -> np.ndarray:
    """The inverse of `fit_to_size`: a fitted (..., size_r, size_c) image back on the
    (rows, cols) grid of the slice it was fitted from (what was cropped away comes back as
    `fill`)."""
    size_r, size_c = img.shape[-2:]
    src_r, dst_r = _fit_spans(rows, size_r)
    src_c, dst_c = _fit_spans(cols, size_c)
    out = np.full((*img.shape[:-2], rows, cols), fill, dtype=img.dtype)
    out[..., src_r, src_c] = img[..., dst_r, dst_c]
    return out


def _resize_mode(rows: int, cols: int, size_r: int, size_c: int) -> str:
    """Area averaging when shrinking (no aliasing), bilinear when enlarging."""
    return "area" if size_r <= rows and size_c <= cols else "bilinear"


def _area_weights(n: int, size: int) -> np.ndarray:
    """(size, n) matrix of torch's adaptive average pooling bins."""
    weights = np.zeros((size, n), dtype=np.float32)
    for i in range(size):
        start, stop = (i * n) // size, -((-(i + 1) * n) // size)
        weights[i, start:stop] = 1.0 / (stop - start)
    return weights


def _bilinear_taps(n: int, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Source indices and weights of torch's bilinear resize, align_corners=False."""
    # torch keeps the scale in float32 but forms the source coordinate in higher precision
    scale = float(np.float32(n / size))
    src = np.maximum((np.arange(size) + 0.5) * scale - 0.5, 0.0).astype(np.float32)
    i0 = src.astype(np.int64)
    i1 = np.minimum(i0 + 1, n - 1)
    frac = src - i0.astype(np.float32)
    return i0, i1, frac


def _bilinear_axis(img: np.ndarray, size: int, axis: int) -> np.ndarray:
    i0, i1, frac = _bilinear_taps(img.shape[axis], size)
    shape = [1] * img.ndim
    shape[axis] = size
    frac = frac.reshape(shape)
    a, b = np.take(img, i0, axis=axis), np.take(img, i1, axis=axis)
    b -= a
    b *= frac
    b += a
    return b


def resize(img: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """Resize the last two axes to (size, size), or to (rows, cols) for a pair; float32.

    Same arithmetic as torch.nn.functional.interpolate(antialias=False): mode "area" (adaptive
    average pooling) when shrinking both axes, "bilinear" with align_corners=False otherwise.
    """
    size_r, size_c = _shape(size)
    img = np.asarray(img, dtype=np.float32)
    rows, cols = img.shape[-2:]
    if (rows, cols) == (size_r, size_c):
        return img.copy()
    if _resize_mode(rows, cols, size_r, size_c) == "bilinear":
        return _bilinear_axis(_bilinear_axis(img, size_r, img.ndim - 2), size_c, img.ndim - 1)
    if rows % size_r == 0 and cols % size_c == 0:  # whole blocks: strided sums beat a reshape-mean
        fr, fc = rows // size_r, cols // size_c
        summed = img[..., 0::fr, :].copy()
        for k in range(1, fr):
            summed += img[..., k::fr, :]
        out = summed[..., 0::fc].copy()
        for k in range(1, fc):
            out += summed[..., k::fc]
        out /= np.float32(fr * fc)
        return out
    return _area_weights(rows, size_r) @ img @ _area_weights(cols, size_c).T


def preprocess(
    hu: np.ndarray, windows: Sequence[Window], *, size: int | tuple[int, int] = FIT_SIZE,
    out_size: int | None = None,
) -> np.ndarray:  # fmt: skip
    """(N, H, W) HU to (N, C, S, S) float32 in [0, 1], S = out_size or size.

    Centre pad/crop to `size` pixels, a side or (rows, cols) from `fit_shape` (no scaling
    here), resize to (out_size, out_size) if given, then one channel per window.
    """
    hu = np.asarray(hu, dtype=np.float32)
    if hu.ndim < 2:
        raise ValueError(f"hu must have at least 2 dimensions, got shape {hu.shape}")
    fit = _shape(size)
    if hu.shape[-2:] != fit:
        hu = fit_to_size(hu, fit)
    if out_size is not None and (out_size, out_size) != fit:
        hu = resize(hu, out_size)
    return stack_windows(hu, windows)


# --- the same on torch tensors ------------------------------------------------------------------


def preprocess_torch(
    hu: torch.Tensor, windows: Sequence[Window], *, size: int | tuple[int, int] = FIT_SIZE,
    out_size: int | None = None,
) -> torch.Tensor:  # fmt: skip
    """`preprocess` for a (N, H, W) tensor on its own device (GPU batches); float32 out."""
    import torch
    import torch.nn.functional as F

    if not windows:
        raise ValueError("windows must name at least one window")
    if hu.dim() != 3:
        raise ValueError(f"hu must be (N, H, W), got shape {tuple(hu.shape)}")
    hu = hu.to(torch.float32)
    size_r, size_c = _shape(size)
    rows, cols = hu.shape[-2:]
    if (rows, cols) != (size_r, size_c):
        src_r, dst_r = _fit_spans(rows, size_r)
        src_c, dst_c = _fit_spans(cols, size_c)
        fitted = hu.new_full((hu.shape[0], size_r, size_c), AIR_HU)
        fitted[:, dst_r, dst_c] = hu[:, src_r, src_c]
        hu = fitted
    if out_size is not None and (out_size, out_size) != (size_r, size_c):
        mode = _resize_mode(size_r, size_c, out_size, out_size)
        extra = {"align_corners": False} if mode == "bilinear" else {}
        hu = F.interpolate(hu[:, None], size=(out_size, out_size), mode=mode, **extra)[:, 0]
    low, width = (torch.from_numpy(a).to(hu.device) for a in _window_arrays(windows))
    out = hu[:, None] - low
    out /= width
    return out.clamp_(0.0, 1.0)

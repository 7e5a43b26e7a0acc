"""HU conversion, windows, fit/resize and the numpy/torch preprocessing parity."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch
import torch.nn.functional as F
from pydicom.dataset import FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import (
    CTImageStorage,
    EnhancedCTImageStorage,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    RLELossless,
    generate_uid,
)

from ml.errors import SliceError
from ml.windowing import (
    BONE,
    BRAIN,
    DEFAULT_WINDOWS,
    FIT_SIZE,
    STUDY_WINDOWS,
    SUBDURAL,
    VASCULAR,
    WINDOWS,
    Window,
    apply_window,
    fit_shape,
    fit_to_size,
    load_slice,
    preprocess,
    preprocess_torch,
    resize,
    stack_windows,
    to_hounsfield,
    windows_by_name,
)


def ct_dataset(
    stored: np.ndarray,
    *,
    bits_stored: int = 16,
    slope: float = 1.0,
    intercept: float = -1024.0,
) -> pydicom.Dataset:
    """A minimal CT slice (or multi-frame) around `stored`, signedness from its dtype."""
    ds = pydicom.Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.Modality = "CT"
    ds.Rows, ds.Columns = stored.shape[-2:]
    if stored.ndim == 3:
        ds.NumberOfFrames = stored.shape[0]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = int(stored.dtype == np.int16)
    ds.RescaleSlope = slope
    ds.RescaleIntercept = intercept
    ds.PixelData = stored.tobytes()
    return ds


def random_hu(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1100, 2500, size=shape).astype(np.float32)


# --- HU -----------------------------------------------------------------------------------------


def test_slope_and_intercept_are_applied() -> None:
    stored = np.arange(-100, 156, dtype=np.int16).reshape(16, 16)
    hu = to_hounsfield(ct_dataset(stored, slope=2.0, intercept=-1000.0))
    assert hu.dtype == np.float32
    assert hu.shape == (1, 16, 16)
    np.testing.assert_array_equal(hu[0], stored * 2.0 - 1000.0)


def test_signed_and_unsigned_storage_give_the_same_hu() -> None:
    hu = np.random.default_rng(1).integers(-1024, 3000, size=(32, 32))
    signed = to_hounsfield(ct_dataset(hu.astype(np.int16), intercept=0.0))
    unsigned = to_hounsfield(ct_dataset((hu + 1024).astype(np.uint16), intercept=-1024.0))
    np.testing.assert_array_equal(signed, unsigned)
    np.testing.assert_array_equal(signed[0], hu)


def test_signed_12_bit_values_are_sign_extended() -> None:
    stored = np.array([[-2048, -1, 0, 2047]], dtype=np.int16)
    hu = to_hounsfield(ct_dataset(stored, bits_stored=12, intercept=0.0))
    np.testing.assert_array_equal(hu[0], stored)


def test_padding_value_and_range_become_air() -> None:
    stored = np.array([[-2000, -1500, 0, 1064]], dtype=np.int16)
    ds = ct_dataset(stored)
    ds.PixelPaddingValue = -2000
    np.testing.assert_array_equal(to_hounsfield(ds)[0], [[-1024, -2524, -1024, 40]])
    ds.PixelPaddingRangeLimit = -1500
    np.testing.assert_array_equal(to_hounsfield(ds)[0], [[-1024, -1024, -1024, 40]])


def test_rsna_12_bit_offset_quirk_is_undone() -> None:
    truth = np.array([[-1000, -500, -1, 0, 40, 80, 1500, 3000]])
    stored = (truth % 4096).astype(np.uint16)  # what the broken slices hold, intercept 0
    hu = to_hounsfield(ct_dataset(stored, bits_stored=12, intercept=0.0))
    np.testing.assert_array_equal(hu[0], truth)


def test_quirk_needs_all_three_conditions() -> None:
    stored = np.array([[0, 40, 1064]], dtype=np.uint16)
    normal = to_hounsfield(ct_dataset(stored, bits_stored=12, intercept=-1024.0))
    np.testing.assert_array_equal(normal[0], stored - 1024.0)
    wide = to_hounsfield(ct_dataset(stored, bits_stored=16, intercept=0.0))
    np.testing.assert_array_equal(wide[0], stored)


def test_multiframe_uses_per_frame_rescale() -> None:
    stored = np.stack([np.full((8, 8), v, np.int16) for v in (100, 200, 300)])
    ds = ct_dataset(stored, slope=1.0, intercept=0.0)
    ds.SOPClassUID = EnhancedCTImageStorage
    frames = []
    for intercept, slope in ((-1024, 1), (-1000, 2), (0, 1)):
        transform = pydicom.Dataset()
        transform.RescaleIntercept, transform.RescaleSlope = intercept, slope
        transform.RescaleType = "HU"
        group = pydicom.Dataset()
        group.PixelValueTransformationSequence = DicomSequence([transform])
        frames.append(group)
    ds.PerFrameFunctionalGroupsSequence = DicomSequence(frames)
    hu = to_hounsfield(ds)
    assert hu.shape == (3, 8, 8)
    assert [float(f.mean()) for f in hu] == [100 - 1024, 400 - 1000, 300]


def test_multiframe_uses_shared_rescale() -> None:
    stored = np.stack([np.full((4, 4), v, np.uint16) for v in (1000, 1064)])
    ds = ct_dataset(stored, intercept=0.0)
    transform = pydicom.Dataset()
    transform.RescaleIntercept, transform.RescaleSlope = -1024, 1
    shared = pydicom.Dataset()
    shared.PixelValueTransformationSequence = DicomSequence([transform])
    ds.SharedFunctionalGroupsSequence = DicomSequence([shared])
    assert [float(f.mean()) for f in to_hounsfield(ds)] == [-24.0, 40.0]


@pytest.mark.parametrize(
    "syntax", [RLELossless, JPEGLSLossless, JPEG2000Lossless], ids=lambda s: s.name
)
@pytest.mark.parametrize("dtype", [np.int16, np.uint16])
def test_lossless_compression_round_trip(syntax: str, dtype: type, tmp_path: Path) -> None:
    hu = np.random.default_rng(2).integers(-1024, 2000, size=(48, 40))
    stored = (hu if dtype is np.int16 else hu + 1024).astype(dtype)
    plain = ct_dataset(stored, intercept=0.0 if dtype is np.int16 else -1024.0)
    plain.save_as(tmp_path / "plain.dcm", enforce_file_format=True)
    packed = ct_dataset(stored, intercept=0.0 if dtype is np.int16 else -1024.0)
    packed.compress(syntax, generate_instance_uid=False)
    packed.save_as(tmp_path / "packed.dcm", enforce_file_format=True)
    ds, from_packed = load_slice(tmp_path / "packed.dcm")
    assert ds.file_meta.TransferSyntaxUID == syntax
    np.testing.assert_array_equal(from_packed, load_slice(tmp_path / "plain.dcm")[1])
    np.testing.assert_array_equal(from_packed[0], hu)


def test_truncated_pixel_data_is_a_slice_error(tmp_path: Path) -> None:
    ds = ct_dataset(np.zeros((32, 32), np.int16))
    ds.PixelData = ds.PixelData[:100]
    with pytest.raises(SliceError, match="less than expected"):
        to_hounsfield(ds)
    good = ct_dataset(np.zeros((32, 32), np.int16))
    good.save_as(tmp_path / "a.dcm", enforce_file_format=True)
    data = (tmp_path / "a.dcm").read_bytes()
    (tmp_path / "cut.dcm").write_bytes(data[: len(data) - 500])
    with pytest.raises(SliceError, match=r"cut\.dcm"):
        load_slice(tmp_path / "cut.dcm")


def test_truncated_compressed_data_is_a_slice_error() -> None:
    ds = ct_dataset(np.random.default_rng(3).integers(0, 4000, (64, 64)).astype(np.uint16))
    ds.compress(RLELossless, generate_instance_uid=False)
    ds.PixelData = ds.PixelData[: len(ds.PixelData) // 2]
    with pytest.raises(SliceError, match="cannot be decoded"):
        to_hounsfield(ds)


def test_unusable_datasets_are_slice_errors(tmp_path: Path) -> None:
    no_pixels = ct_dataset(np.zeros((4, 4), np.int16))
    del no_pixels.PixelData
    with pytest.raises(SliceError, match="no Pixel Data"):
        to_hounsfield(no_pixels)
    rgb = ct_dataset(np.zeros((4, 4), np.int16))
    rgb.PhotometricInterpretation = "RGB"
    with pytest.raises(SliceError, match="RGB"):
        to_hounsfield(rgb)
    (tmp_path / "junk.dcm").write_bytes(b"not dicom at all" * 20)
    with pytest.raises(SliceError, match="not a readable DICOM file"):
        load_slice(tmp_path / "junk.dcm")
    with pytest.raises(SliceError):
        load_slice(tmp_path / "missing.dcm")


# --- windows -------------------------------------------------------------------------------------


def test_brain_window_known_values() -> None:
    out = apply_window(np.array([-100, 0, 20, 40, 80, 200], np.float32), BRAIN)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, [0, 0, 0.25, 0.5, 1, 1])


def test_window_table() -> None:
    assert (BRAIN.center, BRAIN.width) == (40, 80)
    assert (SUBDURAL.center, SUBDURAL.width) == (80, 200)
    assert (BONE.center, BONE.width) == (600, 2800)
    assert windows_by_name(DEFAULT_WINDOWS) == (BRAIN, SUBDURAL, BONE)
    assert windows_by_name(STUDY_WINDOWS)[2] is VASCULAR
    assert all(WINDOWS[name].name == name for name in WINDOWS)
    with pytest.raises(ValueError, match="'lung'"):
        windows_by_name(["brain", "lung"])
    with pytest.raises(ValueError, match="width"):
        Window("flat", 0, 0)


def test_stack_windows_keeps_order_and_shape() -> None:
    hu = random_hu((2, 8, 8))
    out = stack_windows(hu, [BONE, BRAIN, SUBDURAL])
    assert out.shape == (2, 3, 8, 8)
    assert out.dtype == np.float32
    for c, window in enumerate((BONE, BRAIN, SUBDURAL)):
        np.testing.assert_array_equal(out[:, c], apply_window(hu, window))
    assert stack_windows(hu[0], [BRAIN]).shape == (1, 8, 8)


# --- size ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rows", "cols", "size"), [(64, 64, 128), (200, 200, 128), (60, 90, 128), (129, 127, 64)]
)
def test_fit_to_size_keeps_the_centre(rows: int, cols: int, size: int) -> None:
    img = np.zeros((2, rows, cols), np.float32)
    img[:, rows // 2, cols // 2] = 500
    out = fit_to_size(img, size)
    assert out.shape == (2, size, size)
    assert out[0, size // 2, size // 2] == 500
    assert np.count_nonzero(out == 500) == 2
    if rows < size:
        assert out[0, 0, 0] == -1024  # padding is air


def test_fit_to_size_crops_symmetrically() -> None:
    img = np.arange(10 * 10, dtype=np.float32).reshape(10, 10)
    out = fit_to_size(img, 6)
    np.testing.assert_array_equal(out, img[2:8, 2:8])
    assert fit_to_size(img, 14, fill=0.0)[2:12, 2:12].tolist() == img.tolist()


def test_resize_integer_factor_is_block_mean() -> None:
    img = random_hu((3, 64, 64))
    out = resize(img, 32)
    np.testing.assert_allclose(
        out, img.reshape(3, 32, 2, 32, 2).mean(axis=(2, 4)), rtol=0, atol=1e-3
    )
    assert (
        resize(np.full((1, 50, 70), 7.0, np.float32), 33).round(5).tolist()
        == np.full((1, 33, 33), 7.0).tolist()
    )


@pytest.mark.parametrize(
    ("shape", "size", "mode"),
    [((512, 512), 256, "area"), ((300, 300), 128, "area"), ((64, 64), 100, "bilinear"),
     ((533, 480), 128, "area"), ((343, 512), (128, 96), "area"), ((100, 300), 128, "bilinear")],
)
def test_resize_matches_torch_interpolate(
    shape: tuple[int, int], size: int | tuple[int, int], mode: str
) -> None:
    img = random_hu((2, *shape), seed=4)
    extra = {"align_corners": False} if mode == "bilinear" else {}
    target = (size, size) if isinstance(size, int) else size
    expected = F.interpolate(torch.from_numpy(img)[:, None], size=target, mode=mode, **extra)[:, 0]
    np.testing.assert_allclose(resize(img, size), expected.numpy(), rtol=0, atol=1e-3)  # HU


def test_preprocess_shape_range_and_composition() -> None:
    hu = random_hu((3, 100, 120))
    windows = windows_by_name(DEFAULT_WINDOWS)
    out = preprocess(hu, windows, size=128)
    assert out.shape == (3, 3, 128, 128)
    assert out.dtype == np.float32
    assert 0 <= out.min() and out.max() <= 1
    np.testing.assert_array_equal(out, stack_windows(fit_to_size(hu, 128), windows))
    assert preprocess(hu, windows, size=128, out_size=64).shape == (3, 3, 64, 64)


@pytest.mark.parametrize(
    ("shape", "size", "out_size"),
    [
        ((2, 512, 512), 512, 256),
        ((2, 300, 420), 256, 200),
        ((2, 80, 80), 96, 160),
        ((1, 90, 70), 64, None),
        ((2, 512, 512), (480, 480), 128),  # a 240 mm field of view at 0.5 mm pixels
        ((2, 512, 512), (343, 411), 128),  # at 0.7 x 0.584 mm: non-square pixels
        ((1, 256, 256), (600, 600), 96),  # a small matrix padded with air
    ],
)
def test_numpy_and_torch_preprocessing_agree(
    shape: tuple[int, ...], size: int | tuple[int, int], out_size: int | None
) -> None:
    hu = random_hu(shape, seed=5)
    windows = windows_by_name(STUDY_WINDOWS)
    expected = preprocess(hu, windows, size=size, out_size=out_size)
    got = preprocess_torch(torch.from_numpy(hu), windows, size=size, out_size=out_size)
    assert got.dtype == torch.float32
    assert tuple(got.shape) == expected.shape
    np.testing.assert_allclose(got.numpy(), expected, rtol=0, atol=1e-5)
    from_int = preprocess_torch(
        torch.from_numpy(hu.round().astype(np.int16)), windows, size=size, out_size=out_size
    )
    np.testing.assert_allclose(
        from_int.numpy(), preprocess(hu.round(), windows, size=size, out_size=out_size), atol=1e-5
    )


# --- the field of view: the same millimetres per input pixel whatever the scanner's matrix --------


@pytest.mark.parametrize(
    ("spacing", "fov", "expected"),
    [((0.5, 0.5), 240.0, (480, 480)), ((0.7, 0.584), 240.0, (343, 411)),
     ((0.45, 0.45), 230.4, (512, 512)), (None, 240.0, (FIT_SIZE, FIT_SIZE)),
     ((0.5, 0.5), None, (FIT_SIZE, FIT_SIZE)), ((0.0, 0.5), 240.0, (FIT_SIZE, FIT_SIZE)),
     ((50.0, 50.0), 240.0, (FIT_SIZE, FIT_SIZE)), ((0.5,), 240.0, (FIT_SIZE, FIT_SIZE))],
)
def test_fit_shape_covers_the_field_of_view_in_the_slice_s_pixels(
    spacing: tuple[float, ...] | None, fov: float | None, expected: tuple[int, int]
) -> None:
    assert fit_shape(spacing, fov) == expected


def _disk(matrix: int, pixel_mm: float, radius_mm: float) -> np.ndarray:
    """A 60 HU disk of radius_mm in water, centred on a matrix x matrix slice of pixel_mm (in
    water, not air, so the brain window stays linear across the disk's edge)."""
    centre = (np.arange(matrix) - matrix // 2) * pixel_mm
    inside = np.hypot(*np.meshgrid(centre, centre, indexing="ij")) <= radius_mm
    return np.where(inside, 60.0, 0.0).astype(np.float32)[None]


@pytest.mark.parametrize(("matrix", "pixel_mm"), [(512, 0.4), (512, 0.7), (256, 0.9)])
def test_a_field_of_view_gives_a_head_one_size_whatever_the_pixels(
    matrix: int, pixel_mm: float
) -> None:
    """A 75 mm-radius "head" fills the same input pixels at any reconstruction diameter and
    matrix with a field of view; fitted by pixels its size follows the pixel size."""
    windows = windows_by_name(["brain"])
    hu = _disk(matrix, pixel_mm, 75.0)
    disk = 0.75  # 60 HU in the brain window (L40/W80); water and air are 0

    def input_pixels(x: np.ndarray) -> float:  # partial pixels at the edge count by their part
        return float(x[0, 0].sum()) / disk

    fitted = preprocess(hu, windows, size=fit_shape((pixel_mm, pixel_mm), 240.0), out_size=128)
    assert input_pixels(fitted) * (240.0 / 128) ** 2 == pytest.approx(np.pi * 75.0**2, rel=0.01)
    by_pixels = preprocess(hu, windows, size=FIT_SIZE, out_size=128)
    by_pixels_mm2 = input_pixels(by_pixels) * (FIT_SIZE * pixel_mm / 128) ** 2
    assert by_pixels_mm2 == pytest.approx(np.pi * 75.0**2, rel=0.01)  # in its own pixels' mm
    # none of these pixel sizes is 240 / 512 mm: by pixels, the head's size in the input differs
    assert abs(input_pixels(by_pixels) / input_pixels(fitted) - 1) > 0.1


def test_load_slice_reads_a_file(tmp_path: Path) -> None:
    stored = np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) % 2000
    ct_dataset(stored).save_as(tmp_path / "s.dcm", enforce_file_format=True)
    ds, hu = load_slice(tmp_path / "s.dcm")
    assert ds.Modality == "CT"
    np.testing.assert_array_equal(hu[0], stored - 1024.0)

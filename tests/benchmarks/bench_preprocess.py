"""Preprocessing speed: DICOM files to windowed model input, slices per second.

Writes `--slices` phantom slices (512 x 512) to a temporary folder, then times
  (a) a naive per-file loop: dcmread, pixel_array, rescale, one window at a time, np.pad
      (and PIL per channel for the resize), as study code often does;
  (b) ml.windowing's numpy path: load_slice per file, preprocess per batch;
  (c) preprocess_torch on CPU, and on CUDA when there is one (host-to-device copy included);
each with out_size None (512) and 256. "prep only" times preprocessing of HU already in
memory; "end to end" adds reading and decoding the files (the same load_slice for b and c).

    .venv/bin/python tests/benchmarks/bench_preprocess.py --slices 200
    .venv/bin/python tests/benchmarks/bench_preprocess.py --slices 64 --syntax 1.2.840.10008.1.2.4.80
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
import torch
from PIL import Image

from ml.phantom import write_series
from ml.windowing import DEFAULT_WINDOWS, load_slice, preprocess, preprocess_torch, windows_by_name

SIZE = 512


def naive(paths: list[Path], out_size: int | None) -> None:
    """One file at a time, one window at a time."""
    for path in paths:
        ds = pydicom.dcmread(path)
        img = ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(
            ds.RescaleIntercept
        )
        pad_r, pad_c = SIZE - img.shape[0], SIZE - img.shape[1]
        img = np.pad(
            img,
            ((pad_r // 2, pad_r - pad_r // 2), (pad_c // 2, pad_c - pad_c // 2)),
            constant_values=-1024,
        )
        channels = []
        for window in windows_by_name(DEFAULT_WINDOWS):
            lo = window.center - window.width / 2
            channel = np.clip((img - lo) / window.width, 0, 1)
            if out_size is not None:
                pil = Image.fromarray(channel.astype(np.float32), mode="F")
                channel = np.asarray(pil.resize((out_size, out_size), Image.Resampling.BILINEAR))
            channels.append(channel)
        np.stack(channels).astype(np.float32)


def decode(paths: list[Path]) -> np.ndarray:
    return np.concatenate([load_slice(p)[1] for p in paths])


def numpy_path(paths: list[Path], out_size: int | None, batch: int) -> None:
    windows = windows_by_name(DEFAULT_WINDOWS)
    for start in range(0, len(paths), batch):
        preprocess(decode(paths[start : start + batch]), windows, size=SIZE, out_size=out_size)


def numpy_prep(hu: np.ndarray, out_size: int | None, batch: int) -> None:
    windows = windows_by_name(DEFAULT_WINDOWS)
    for start in range(0, len(hu), batch):
        preprocess(hu[start : start + batch], windows, size=SIZE, out_size=out_size)


def torch_prep(hu: np.ndarray, out_size: int | None, batch: int, device: torch.device) -> None:
    windows = windows_by_name(DEFAULT_WINDOWS)
    for start in range(0, len(hu), batch):
        x = torch.from_numpy(hu[start : start + batch]).to(device, non_blocking=True)
        preprocess_torch(x, windows, size=SIZE, out_size=out_size)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def rate(n: int, fn: Callable[[], object], repeats: int) -> float:
    """Slices per second, median of `repeats` runs."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return n / statistics.median(times)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--slices", type=int, default=200, help="phantom slices to write (default 200)"
    )
    parser.add_argument(
        "--batch", type=int, default=32, help="slices per preprocess call (default 32)"
    )
    parser.add_argument(
        "--repeats", type=int, default=3, help="timed runs, median reported (default 3)"
    )
    parser.add_argument(
        "--syntax", default=None, help="transfer syntax UID of the files (default explicit VR LE)"
    )
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        series = write_series(
            Path(tmp), seed=0, slices=args.slices, size=SIZE, transfer_syntax=args.syntax
        )
        paths = list(series.paths)
        print(f"wrote {len(paths)} slices of {SIZE}x{SIZE} in {time.perf_counter() - started:.1f} s; "
              f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads")  # fmt: skip
        n, r = len(paths), args.repeats
        decode_rate = rate(n, lambda: decode(paths), r)
        hu = decode(paths)
        devices = [torch.device("cpu")] + (
            [torch.device("cuda")] if torch.cuda.is_available() else []
        )
        rows = []
        for out_size in (None, 256):
            label = out_size or SIZE
            rows.append(
                (f"(a) naive loop -> {label}", None, rate(n, lambda o=out_size: naive(paths, o), r))
            )
            prep = rate(n, lambda o=out_size: numpy_prep(hu, o, args.batch), r)
            rows.append(
                (
                    f"(b) numpy -> {label}",
                    prep,
                    rate(n, lambda o=out_size: numpy_path(paths, o, args.batch), r),
                )
            )
            for device in devices:
                torch_prep(hu[: args.batch], out_size, args.batch, device)  # warm-up
                prep = rate(n, lambda o=out_size, d=device: torch_prep(hu, o, args.batch, d), r)
                end_to_end = 1 / (1 / decode_rate + 1 / prep)
                rows.append((f"(c) torch {device.type} -> {label}", prep, end_to_end))
    print(f"\nread + decode alone (load_slice): {decode_rate:8.1f} slices/s")
    print(f"{'path':<28}{'prep only':>14}{'end to end':>14}   (slices/s)")
    for name, prep_rate, total in rows:
        prep_text = f"{prep_rate:14.1f}" if prep_rate is not None else f"{'-':>14}"
        print(f"{name:<28}{prep_text}{total:14.1f}")


if __name__ == "__main__":
    main()

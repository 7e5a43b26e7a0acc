"""Inference speed: slices/s per architecture, and one series through Classifier.predict_series.

Each architecture runs fp32 at its ARCHITECTURES input size (512 for the study models, 299
for Inception v3, 256 for ichnet) with random weights: one warm-up batch, then timed repeats.
A sequence model gets one series of `batch` slices. The series benchmark saves a random-weight
checkpoint of the default model and times the whole `predict_series` (windowing, 512 fit,
resize, 2.5D context, model) on 512 x 512 HU slices.

    .venv/bin/python -m tests.benchmarks.bench_inference
    .venv/bin/python -m tests.benchmarks.bench_inference --archs vanilla ichnet --batches 8
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from ml.checkpoint import ModelCard, save_checkpoint
from ml.inference import Classifier
from ml.models import ARCHITECTURES, DEFAULT_ARCHITECTURE, build_model
from ml.windowing import DEFAULT_WINDOWS


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_architecture(name: str, batch: int, repeats: int, device: torch.device) -> float:
    """Median slices per second of `repeats` timed forward passes."""
    spec = ARCHITECTURES[name]
    torch.manual_seed(0)
    model = build_model(name).eval().to(device)
    size, channels = spec.input_size, spec.in_channels
    shape = (1, batch, channels, size, size) if spec.kind == "sequence" else (batch, channels, size, size)
    x = torch.rand(shape, device=device)
    times = []
    with torch.inference_mode():
        model(x)  # warm-up: allocator, kernels, cuDNN autotune
        _sync(device)
        for _ in range(repeats):
            started = time.perf_counter()
            model(x)
            _sync(device)
            times.append(time.perf_counter() - started)
    return batch / statistics.median(times)


def _head_like_slices(n: int, seed: int = 0) -> list[np.ndarray]:
    """512 x 512 HU slices: air around a skull ring around brain, with noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:512, :512]
    radius = np.hypot(yy - 256, xx - 256)
    base = np.where(radius < 200, 35.0, np.where(radius < 215, 1000.0, -1000.0)).astype(np.float32)
    return [base + rng.normal(0, 8, base.shape).astype(np.float32) for _ in range(n)]


def bench_series(n_slices: int, repeats: int, device: torch.device, batch: int = 16) -> tuple[float, float]:
    """(median seconds per predict_series, of which preprocessing) for the default model."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "default.pt"
        card = ModelCard.new(DEFAULT_ARCHITECTURE, windows=DEFAULT_WINDOWS,
                             training_data="random weights; benchmark only")  # fmt: skip
        model = build_model(DEFAULT_ARCHITECTURE, in_channels=card.in_channels)
        save_checkpoint(path, model, card)
        classifier = Classifier.load(path, device=str(device))
    slices = _head_like_slices(n_slices)
    classifier.predict_series(slices, batch_size=batch)  # warm-up
    totals, prep = [], []
    for _ in range(repeats):
        started = time.perf_counter()
        classifier.preprocess(slices)
        prep.append(time.perf_counter() - started)
        started = time.perf_counter()
        classifier.predict_series(slices, batch_size=batch)
        _sync(device)
        totals.append(time.perf_counter() - started)
    return statistics.median(totals), statistics.median(prep)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--archs", nargs="+", default=list(ARCHITECTURES), choices=list(ARCHITECTURES))
    parser.add_argument("--batches", nargs="+", type=int, default=[8, 32])
    parser.add_argument("--repeats", type=int, default=2, help="timed runs after one warm-up")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads for torch")
    parser.add_argument("--series-slices", type=int, default=40, help="0 skips the series benchmark")
    parser.add_argument("--no-cuda", action="store_true", help="CPU only even if CUDA is there")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    devices = [torch.device("cpu")]
    if torch.cuda.is_available() and not args.no_cuda:
        devices.append(torch.device("cuda"))
    print(f"torch {torch.__version__}, {args.threads} CPU threads, fp32, median of {args.repeats}")
    for device in devices:
        label = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
        print(f"\n{label}")
        print(f"{'architecture':<14}{'input':>7}" + "".join(f"{f'b={b} sl/s':>14}" for b in args.batches))
        for name in args.archs:
            spec = ARCHITECTURES[name]
            rates = [bench_architecture(name, b, args.repeats, device) for b in args.batches]
            print(f"{name:<14}{spec.input_size:>7}" + "".join(f"{r:>14.1f}" for r in rates), flush=True)
        if args.series_slices:
            total, prep = bench_series(args.series_slices, args.repeats, device)
            print(f"{DEFAULT_ARCHITECTURE} predict_series, {args.series_slices} slices of 512x512: "
                  f"{total:.2f} s (preprocessing {prep:.2f} s)")  # fmt: skip


if __name__ == "__main__":
    main()

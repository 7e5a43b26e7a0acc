"""Training input pipeline: slices/s delivered to the model, from DICOM and from the cache.

Writes phantom studies at 512x512, then measures (a) building the preprocessing cache
(decode + HU + 3 windows + fit + resize, once), and (b) a DataLoader over the cache with 2.5D
context, batch 32, at 0 and 2 loader workers. The seed study fed its GPU 44 images/s.
A script that prints numbers; never a test.

    .venv/bin/python tests/benchmarks/bench_cache.py --studies 10 --input-size 128
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository

import torch
from torch.utils.data import DataLoader

from ml.cache import SliceCache, SliceDataset, build_cache
from ml.phantom import write_dataset
from ml.rsna import index_images, read_labels
from ml.windowing import DEFAULT_WINDOWS


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=10)
    parser.add_argument("--slices", type=int, default=24)
    parser.add_argument("--input-size", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory(prefix="ichtriage-cache-") as tmp_name:
        tmp = Path(tmp_name)
        labels = write_dataset(tmp / "dicom", studies=args.studies, seed=7, slices=args.slices,
                               size=512)
        records = index_images(tmp / "dicom", read_labels(labels))
        start = time.perf_counter()
        build_cache(records, tmp / "cache", windows=DEFAULT_WINDOWS, size=512,
                    out_size=args.input_size)
        built = time.perf_counter() - start
        cache = SliceCache.open(tmp / "cache")
        print(f"{len(cache)} slices 512x512 -> {args.input_size}px, 3 windows")
        print(f"cache build (decode + HU + windows + resize, once): {len(cache) / built:8.1f} "
              "slices/s")
        for workers in (0, 2):
            loader = DataLoader(SliceDataset(cache, context=1), batch_size=32, shuffle=True,
                                num_workers=workers)
            start = time.perf_counter()
            seen = 0
            for _ in range(args.epochs):
                for x, _y in loader:
                    seen += x.shape[0]
            elapsed = time.perf_counter() - start
            print(f"from the cache, 2.5D (9 channels), {workers} loader workers: "
                  f"{seen / elapsed:8.1f} slices/s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

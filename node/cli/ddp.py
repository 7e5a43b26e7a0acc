"""`ichtriage admin train --nproc N`: the same training as N torchrun ranks on this host
(DistributedDataParallel; gloo on the CPU, NCCL on CUDA: `ml.distributed`).

The command starts `torch.distributed.run` with `admin train` and the same options; each rank
sees torchrun's environment and trains its share. Rank 0 alone prints, validates and writes
the checkpoints; registration (`--register`) happens here, once, after every rank ended well.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from node.config import Settings

_VALUED = ("arch", "dicom_dir", "labels", "out", "epochs", "batch_size", "lr", "input_size",
           "context", "val_fraction", "seed", "loader_workers", "pretrained")
_FLAGS = ("augment", "freeze_backbone", "resume")
_OPTION = {"loader_workers": "--workers"}


def is_rank(env: Mapping[str, str] | None = None) -> bool:
    """Whether this process is one of several torchrun ranks (torchrun sets WORLD_SIZE)."""
    env = os.environ if env is None else env
    return env.get("WORLD_SIZE", "1").strip() not in ("", "0", "1")


def launch(nproc: int, args: Sequence[str], *, module: str = "node") -> int:
    """Run `python -m <module> <args>` under torchrun as `nproc` processes on this host;
    returns torchrun's exit status (non-zero when a rank failed).

    --standalone: a rendezvous on a free local port, so runs side by side never meet.
    """
    if nproc < 1:
        raise ValueError(f"nproc: must be >= 1, got {nproc}")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc-per-node={nproc}", "-m", module, *args]
    # torchrun would set 1 itself, with a warning: share the cores instead (an operator's
    # OMP_NUM_THREADS is kept)
    threads = str(max(1, (os.cpu_count() or 1) // nproc))
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", threads)}
    return subprocess.run(command, env=env, check=False).returncode


def rank_argv(args: argparse.Namespace, settings: Settings) -> list[str]:
    """`admin train ...` for each rank: the options given, the device and log level settled
    here, no --register and no --nproc (the ranks know their number from torchrun)."""
    argv = ["admin", "train"]
    for name in _VALUED:
        value = getattr(args, name, None)
        if value is not None:
            argv += [_OPTION.get(name, "--" + name.replace("_", "-")), str(value)]
    argv += ["--windows", ",".join(args.windows)]
    for folder, csv in getattr(args, "extra_data", []):
        argv += ["--extra-data", str(folder), str(csv)]
    argv += ["--" + name.replace("_", "-") for name in _FLAGS if getattr(args, name, False)]
    return [*argv, "--device", settings.device, "--log-level", settings.log_level]


def train_with_torchrun(args: argparse.Namespace, settings: Settings) -> int:
    """Run `admin train` as `args.nproc` ranks; then register rank 0's best.pt when asked."""
    code = launch(args.nproc, rank_argv(args, settings))
    if code != 0:
        print(f"ichtriage admin train: torchrun ended with exit status {code}")
        return code
    if args.register:
        from node.cli.models import register_trained

        return register_trained(Path(args.out) / "best.pt", args.register, settings)
    return 0

"""Data-parallel training under torchrun: one process per device, DistributedDataParallel.

`torchrun` (torch.distributed.run) starts N copies of a command and tells each its place in
the environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT); `from_environment` reads it
and `start` joins the process group: NCCL when the ranks train on CUDA (rank r on cuda:<local
rank>), gloo on the CPU. Every rank trains on its own share of each epoch (DistributedSampler),
DDP averages the gradients, and `average_buffers` keeps BatchNorm statistics equal, so the
ranks hold one model; rank 0 alone validates and writes checkpoints (`Distributed.is_main`).
`node.cli.ddp` starts torchrun.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from ml.cache import SliceCache, as_windows, build_shard, cache_key, current_cache, join_shards
from ml.errors import ModelError
from ml.rsna import ImageRecord
from ml.windowing import Window

logger = logging.getLogger(__name__)

# Rank 0 validates, calibrates and writes while the others wait at the next collective; gloo
# and NCCL give up after their timeout, so it is long.
TIMEOUT = timedelta(hours=2)


@dataclass(frozen=True)
class Distributed:
    """This process's place among the ranks (torchrun's environment)."""

    rank: int
    world_size: int
    local_rank: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def from_environment(env: dict[str, str] | None = None) -> Distributed | None:
    """The torchrun rank this process is, or None when it runs alone (no WORLD_SIZE > 1)."""
    env = dict(os.environ) if env is None else env
    try:
        world = int(env.get("WORLD_SIZE", "1"))
        rank, local = int(env.get("RANK", "0")), int(env.get("LOCAL_RANK", "0"))
    except ValueError as exc:
        raise ModelError(f"torchrun environment: {exc}") from exc
    if world <= 1:
        return None
    if not 0 <= rank < world:
        raise ModelError(f"torchrun environment: RANK {rank} outside WORLD_SIZE {world}")
    return Distributed(rank, world, local)


def start(ranks: Distributed, device: torch.device) -> torch.device:
    """Join the process group (idempotent); returns the device this rank trains on."""
    if device.type == "cuda":
        device = torch.device("cuda", ranks.local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=TIMEOUT,
                                rank=ranks.rank, world_size=ranks.world_size)
        logger.info("rank %d of %d on %s (%s)", ranks.rank, ranks.world_size, device,
                    dist.get_backend())
    return device


def wrap(model: nn.Module, device: torch.device) -> nn.Module:
    """`model` in DistributedDataParallel; its construction copies rank 0's weights to all."""
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)


def average_buffers(model: nn.Module, world_size: int) -> None:
    """Average floating buffers (BatchNorm running statistics) over the ranks, in place.

    DDP copies rank 0's buffers before each forward, so after the last one of an epoch each
    rank holds statistics of its own batches; averaging makes the ranks' models identical.
    """
    for buffer in model.buffers():
        if buffer.is_floating_point():
            dist.all_reduce(buffer, op=dist.ReduceOp.SUM)
            buffer.div_(world_size)


def all_sum(values: Sequence[float], device: torch.device) -> list[float]:
    """Element-wise sum of `values` over the ranks (float64)."""
    tensor = torch.tensor(list(values), dtype=torch.float64, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return [float(v) for v in tensor.cpu()]


def gather(value: Any, world_size: int) -> list[Any]:
    """`value` of every rank, in rank order (picklable objects)."""
    out: list[Any] = [None] * world_size
    dist.all_gather_object(out, value)
    return out


def broadcast(value: Any) -> Any:
    """Rank 0's `value`, on every rank."""
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier() -> None:
    dist.barrier()


def finish() -> None:
    """Leave the process group, when one was joined."""
    if dist.is_initialized():
        dist.destroy_process_group()


def build_cache_together(
    ranks: Distributed, records: Sequence[ImageRecord], cache_dir: Path, *,
    windows: Sequence[Window | str], size: int, out_size: int | None = None, workers: int = 0,
    field_of_view_mm: float | None = None,
) -> SliceCache:  # fmt: skip
    """`ml.cache.build_cache` by all ranks at once: each encodes its shard (with `workers`
    processes of its own), rank 0 joins them, then every rank opens the one cache.

    Rank 0 decides whether the cache is current, so the ranks never disagree about it.
    """
    key = cache_key(records, as_windows(windows), size, out_size, field_of_view_mm)
    current = broadcast(current_cache(cache_dir, key) is not None if ranks.is_main else None)
    if not current:
        build_shard(records, cache_dir, windows=windows, size=size, out_size=out_size,
                    rank=ranks.rank, world_size=ranks.world_size, workers=workers,
                    field_of_view_mm=field_of_view_mm)
        barrier()
        if ranks.is_main:
            join_shards(records, cache_dir, windows=windows, size=size, out_size=out_size,
                        world_size=ranks.world_size, field_of_view_mm=field_of_view_mm)
        barrier()
    return SliceCache.open(cache_dir)

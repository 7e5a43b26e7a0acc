"""What `ml.train` keeps between epochs for `--resume`: the epochs done, the best so far, the
history, and (in last.train.pt) the optimizer, the grad scaler and the RNG states."""

from __future__ import annotations

import dataclasses
import logging
import math
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ml.checkpoint import read_checkpoint
from ml.errors import ModelError

if TYPE_CHECKING:
    from ml.train import TrainConfig

logger = logging.getLogger(__name__)


@dataclass
class TrainState:
    epoch: int = 0  # epochs completed
    best_loss: float = math.inf
    best_epoch: int = 0
    history: list[dict[str, Any]] = dataclasses.field(default_factory=list)


def save_state(path: Path, state: TrainState, config: TrainConfig, optimizer: torch.optim.Optimizer,
                scaler: torch.amp.GradScaler) -> None:  # fmt: skip
    payload = {
        "format": 1, "architecture": config.architecture, "epoch": state.epoch,
        "best_loss": state.best_loss, "best_epoch": state.best_epoch, "history": state.history,
        "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(),
        "rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }  # fmt: skip
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(payload, tmp)
    tmp.replace(path)


def resume(paths: dict[str, Path], config: TrainConfig, model: nn.Module,
            optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler) -> TrainState:  # fmt: skip
    if not paths["state"].is_file():
        logger.info("resume: no %s, starting from epoch 0", paths["state"])
        return TrainState()
    try:
        payload = torch.load(paths["state"], map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, OSError, ValueError, pickle.UnpicklingError) as exc:
        raise ModelError(f"cannot read training state {paths['state']}: {exc}") from exc
    if payload.get("architecture") != config.architecture:
        raise ModelError(f"resume: {paths['state']} is for {payload.get('architecture')!r}, "
                         f"not {config.architecture!r}")  # fmt: skip
    card, state_dict = read_checkpoint(paths["last"])
    expected = config.card()
    settings = ("in_channels", "input_size", "field_of_view_mm")
    if [getattr(card, k) for k in settings] != [getattr(expected, k) for k in settings]:
        raise ModelError(f"resume: {paths['last']} was trained with other input settings")
    model.load_state_dict(state_dict)
    optimizer.load_state_dict(payload["optimizer"])
    scaler.load_state_dict(payload["scaler"])
    torch.set_rng_state(payload["rng"])
    if payload["cuda_rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(payload["cuda_rng"])
    logger.info("resume: %s after epoch %d", config.architecture, payload["epoch"])
    return TrainState(payload["epoch"], payload["best_loss"], payload["best_epoch"], payload["history"])

"""Training loop: Adam on the RSNA-weighted BCE, one checkpoint per epoch, best by val score.

Datasets yield `(x, y)`: for slice models x (C, H, W) float32 and y (L,) float32; for
sequence models one series, x (T, C, H, W) and y (T, L), batched by `pad_series`. In
`checkpoint_dir` the loop keeps `last.pt` (+ `last.train.pt`: optimizer, scaler, RNG and
history for `resume`) and `best.pt` (lowest validation weighted log loss), which at the end
gets the thresholds chosen on validation and the validation metrics in its card.

The default model, `ichnet_seq`, trains best in two stages (as the RSNA 2019 winners did):
first `ichnet` on slices; then `ichnet_seq` on series with `pretrained=<ichnet best.pt>` and
`freeze_backbone=True`, which trains the GRU only and starts from the slice model's outputs.
End to end from scratch it learns far slower (few, highly correlated batches of series).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import random
import sys
import time
from collections.abc import Callable, Iterator, Sequence, Sized
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from torch.optim.lr_scheduler import LambdaLR
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from tqdm import tqdm

from ml import distributed
from ml.calibration import apply_temperatures, fit_temperatures, series_operating_point, sigmoid
from ml.checkpoint import (
    ModelCard,
    load_checkpoint,
    save_checkpoint,
    weights_sha256,
)
from ml.distributed import Distributed
from ml.errors import ModelError
from ml.inference import resolve_device
from ml.labels import LABEL_WEIGHTS, LABELS
from ml.metrics import Metrics, binary_cross_entropy, choose_thresholds, evaluate, plot_roc
from ml.models import DEFAULT_ARCHITECTURE, architecture, build_model, train_mode
from ml.train_state import TrainState, resume, save_state
from ml.windowing import DEFAULT_WINDOWS, windows_by_name

logger = logging.getLogger(__name__)
LR_SCHEDULES = ("constant", "cosine")
LR_FLOOR = 0.02  # the cosine schedule's last learning rate, as a fraction of TrainConfig.lr

Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]  # x, y, mask (sequence only)
Augment = Callable[[torch.Tensor], torch.Tensor]  # a training batch's x, changed (ml.augment)


@dataclass(frozen=True)
class TrainConfig:
    checkpoint_dir: Path
    architecture: str = DEFAULT_ARCHITECTURE
    epochs: int = 10  # total, also when resuming
    batch_size: int = 16  # slices for slice models, series for sequence models
    lr: float = 1e-3
    # "constant", or "cosine": the learning rate falls from `lr` to LR_FLOOR * lr along half a
    # cosine over the epochs (torch's LambdaLR, stepped once per epoch)
    lr_schedule: str = "constant"
    weight_decay: float = 0.0
    seed: int = 0
    num_workers: int = 0
    device: str = "auto"  # "auto": CUDA when available
    amp: bool = True  # mixed precision, on CUDA only
    freeze_backbone: bool = False  # train the head only, as the study did
    pretrained: Path | None = None  # local state_dict file
    input_size: int | None = None  # None: the architecture's
    field_of_view_mm: float | None = None  # see ModelCard.field_of_view_mm; None: 512 px fit
    windows: tuple[str, ...] = DEFAULT_WINDOWS
    context: int | None = None  # None: the architecture's
    resume: bool = False
    pos_weight: tuple[float, ...] | None = None  # per label, for BCE's positive term
    min_sensitivity_any: float = 0.95  # operating point of "any" (see ml.metrics)
    min_specificity_subtypes: float = 0.95  # floor under the subtypes' Youden points
    training_data: str = "unspecified"  # card text: what the data was, how many, which seed

    def __post_init__(self) -> None:
        spec = architecture(self.architecture)
        windows_by_name(self.windows)
        for name in ("epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: must be >= 1, got {getattr(self, name)}")
        if not self.lr > 0:
            raise ValueError(f"lr: must be > 0, got {self.lr}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr_schedule: one of {', '.join(LR_SCHEDULES)}, "
                             f"got {self.lr_schedule!r}")
        if self.num_workers < 0:
            raise ValueError(f"num_workers: must be >= 0, got {self.num_workers}")
        if self.context is not None and self.context < 0:
            raise ValueError(f"context: must be >= 0, got {self.context}")
        if self.input_size is not None and self.input_size < spec.min_input_size:
            raise ValueError(f"input_size: {self.architecture} needs >= {spec.min_input_size}")
        if self.pos_weight is not None and len(self.pos_weight) != len(LABELS):
            raise ValueError(f"pos_weight: need {len(LABELS)} values, got {len(self.pos_weight)}")
        for name in ("min_sensitivity_any", "min_specificity_subtypes"):
            if not 0 < getattr(self, name) <= 1:
                raise ValueError(f"{name}: must lie in (0, 1], got {getattr(self, name)}")

    def card(self) -> ModelCard:
        """The card this run's checkpoints start from (thresholds 0.5, no metrics)."""
        return ModelCard.new(
            self.architecture, windows=self.windows, context=self.context,
            input_size=self.input_size, training_data=self.training_data,
            field_of_view_mm=self.field_of_view_mm,
        )  # fmt: skip


@dataclass(frozen=True)
class TrainResult:
    best_checkpoint: Path  # final model: best epoch, with thresholds and metrics in its card
    last_checkpoint: Path
    train_state: Path
    roc_plot: Path
    card: ModelCard  # of best_checkpoint
    metrics: Metrics  # validation, at the chosen thresholds
    history: tuple[dict[str, Any], ...]  # one entry per epoch


class WeightedBCEWithLogits(nn.Module):
    """BCE on logits, each row weighted as the RSNA 2019 score (any 2, subtypes 1)."""

    weights: torch.Tensor

    def __init__(self, pos_weight: Sequence[float] | None = None) -> None:
        super().__init__()
        self.register_buffer("weights", torch.tensor(LABEL_WEIGHTS) / sum(LABEL_WEIGHTS))
        self.pos_weight = None if pos_weight is None else torch.tensor(list(pos_weight))

    def forward(
        self, logits: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        pos_weight = None if self.pos_weight is None else self.pos_weight.to(logits.device)
        loss = F.binary_cross_entropy_with_logits(
            logits.float(), target, pos_weight=pos_weight, reduction="none"
        )
        rows = (loss * self.weights).sum(dim=-1)
        return rows[mask].mean() if mask is not None else rows.mean()


def collate_slices(batch: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> Batch:
    x, y = zip(*batch, strict=True)
    return torch.stack(x), torch.stack(y), None


def pad_series(batch: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> Batch:
    """Series of different lengths to (B, T, C, H, W), (B, T, L) and a (B, T) mask of real
    slices; padding (zeros) goes at the end and the loss and metrics skip it."""
    longest = max(x.shape[0] for x, _ in batch)
    first_x, first_y = batch[0]
    x = first_x.new_zeros((len(batch), longest, *first_x.shape[1:]))
    y = first_y.new_zeros((len(batch), longest, *first_y.shape[1:]))
    mask = torch.zeros(len(batch), longest, dtype=torch.bool)
    for i, (xi, yi) in enumerate(batch):
        x[i, : xi.shape[0]], y[i, : yi.shape[0]], mask[i, : xi.shape[0]] = xi, yi, True
    return x, y, mask


def _seed_worker(worker_id: int) -> None:
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def _loader(dataset: Dataset[Any], config: TrainConfig, device: torch.device, *, seed: int | None,
            ranks: Distributed | None = None) -> DataLoader[Any]:  # fmt: skip
    """Shuffled with `seed` (None: in order). With `ranks`, this rank's share of each epoch
    (DistributedSampler) in batches of batch_size / world_size, so that the ranks together
    take the steps one process would."""
    sequence = architecture(config.architecture).kind == "sequence"
    sampler: DistributedSampler[Any] | None = None
    batch_size = config.batch_size
    if ranks is not None and seed is not None:
        sampler = DistributedSampler(dataset, num_replicas=ranks.world_size, rank=ranks.rank,
                                     shuffle=True, seed=config.seed)  # fmt: skip
        sampler.set_epoch(seed - config.seed)
        batch_size = max(1, math.ceil(config.batch_size / ranks.world_size))
    rows = len(sampler) if sampler is not None else len(dataset)  # type: ignore[arg-type]
    return DataLoader(
        dataset, batch_size=batch_size, shuffle=seed is not None and sampler is None,
        sampler=sampler,
        # a training batch of one row trips BatchNorm: leave it out (another one each epoch)
        drop_last=seed is not None and rows > 1 and rows % batch_size == 1,
        generator=torch.Generator().manual_seed(seed) if sampler is None and seed is not None else None,
        num_workers=config.num_workers, worker_init_fn=_seed_worker,
        collate_fn=pad_series if sequence else collate_slices,
        pin_memory=device.type == "cuda",
    )  # fmt: skip


def _batches(loader: DataLoader[Any], device: torch.device, desc: str, progress: bool,
             augment: Augment | None = None) -> Iterator[Batch]:  # fmt: skip
    bar = tqdm(loader, desc=desc, unit="batch", leave=False,
               disable=not (progress and sys.stderr.isatty()))  # fmt: skip
    for x, y, mask in bar:
        if augment is not None:  # on the CPU, before the move: its draws are torch's CPU ones
            x = augment(x)
        yield (x.to(device, non_blocking=True), y.to(device, non_blocking=True),
               None if mask is None else mask.to(device))  # fmt: skip


def _forward(model: nn.Module, x: torch.Tensor, mask: torch.Tensor | None, amp: bool) -> torch.Tensor:
    autocast = torch.autocast("cuda", dtype=torch.float16) if amp else contextlib.nullcontext()
    with autocast:
        return model(x) if mask is None else model(x, mask)


@torch.inference_mode()
def predict_logits(
    model: nn.Module, loader: DataLoader[Any], device: torch.device, *, amp: bool = False,
    progress: bool = False,
) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """(labels, logits), each (rows, L); padded slices of series are left out."""
    model.eval()
    truths, outputs = [], []
    for x, y, mask in _batches(loader, device, "validate", progress):
        logits = _forward(model, x, mask, amp).float()
        if mask is not None:
            logits, y = logits[mask], y[mask]
        truths.append(y.cpu().numpy())
        outputs.append(logits.cpu().numpy())
    return np.concatenate(truths), np.concatenate(outputs).astype(np.float64)


def predict(
    model: nn.Module, loader: DataLoader[Any], device: torch.device, *, amp: bool = False,
    progress: bool = False,
) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """(labels, probabilities), each (rows, L), uncalibrated; padded slices are left out."""
    y, logits = predict_logits(model, loader, device, amp=amp, progress=progress)
    return y, sigmoid(logits)


def series_ids_of(dataset: Dataset[Any]) -> list[str] | None:
    """The series of each row `predict` returns for `dataset`, when it knows them.

    `ml.series.SeriesDataset` yields whole series; `ml.cache.SliceDataset` slices in cache
    order. Anything else: None.
    """
    uids = getattr(dataset, "series_uids", None)
    rows = getattr(dataset, "slice_indices", None)
    if uids is not None and callable(rows):
        return [uid for i, uid in enumerate(uids) for _ in rows(i)]
    cache = getattr(dataset, "cache", None)
    if cache is not None and isinstance(getattr(cache, "series_uids", None), list):
        return list(cache.series_uids)
    return None


def _train_epoch(
    model: nn.Module, loader: DataLoader[Any], optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler, criterion: WeightedBCEWithLogits, device: torch.device,
    amp: bool, desc: str, progress: bool, augment: Augment | None,
) -> tuple[float, int]:  # fmt: skip
    """(sum of the rows' losses, rows) of one epoch."""
    train_mode(model)
    total, rows = 0.0, 0
    for x, y, mask in _batches(loader, device, desc, progress, augment):
        optimizer.zero_grad(set_to_none=True)
        loss = criterion(_forward(model, x, mask, amp), y, mask)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        n = int(mask.sum()) if mask is not None else x.shape[0]
        total, rows = total + float(loss.detach()) * n, rows + n
    return total, rows


def train(
    config: TrainConfig,
    train_set: Dataset[Any],
    val_set: Dataset[Any],
    *,
    progress: bool = True,
    log: Callable[[dict[str, Any]], None] | None = None,
    augment: Augment | None = None,
    ranks: Distributed | None = None,
) -> TrainResult:
    """Train `config.architecture`; `log` gets each epoch's history entry; `augment` changes
    each training batch (e.g. `ml.augment.BatchAugment`).

    Seeds torch, numpy and random (global state) with `config.seed`; each epoch shuffles with
    its own generator (seed + epoch), so a resumed run repeats an uninterrupted one.

    With `ranks` (a torchrun rank, `ml.distributed`) the model trains under
    DistributedDataParallel on this rank's share of each epoch; rank 0 alone validates,
    writes the checkpoints and calls `log`; every rank returns rank 0's result. The ranks'
    final weights are compared (sha256): ModelError when they differ.
    """
    for name, data in (("train_set", train_set), ("val_set", val_set)):
        if isinstance(data, Sized) and len(data) == 0:
            raise ValueError(f"{name}: is empty")
    device = resolve_device(config.device)
    if ranks is not None:
        device = distributed.start(ranks, device)
    main = ranks is None or ranks.is_main
    amp = config.amp and device.type == "cuda"
    torch.manual_seed(config.seed)
    np.random.seed(config.seed)
    random.seed(config.seed)
    card = config.card()
    model = build_model(
        config.architecture, in_channels=card.in_channels, input_size=card.input_size,
        pretrained=config.pretrained, freeze_backbone=config.freeze_backbone,
    ).to(device)  # fmt: skip
    optimizer = torch.optim.Adam(
        [p for p in model.parameters() if p.requires_grad], lr=config.lr,
        weight_decay=config.weight_decay,
    )  # fmt: skip
    scaler = torch.amp.GradScaler(device.type, enabled=amp)
    criterion = WeightedBCEWithLogits(config.pos_weight).to(device)
    directory = config.checkpoint_dir
    directory.mkdir(parents=True, exist_ok=True)
    paths = {"best": directory / "best.pt", "last": directory / "last.pt",
             "state": directory / "last.train.pt"}  # fmt: skip
    state = resume(paths, config, model, optimizer, scaler) if config.resume else TrainState()
    schedule = _lr_schedule(optimizer, config, done=state.epoch)
    net = model if ranks is None else distributed.wrap(model, device)
    if ranks is not None and not main:
        torch.manual_seed(config.seed + ranks.rank)  # its own augmentation and dropout draws
    val_loader = _loader(val_set, config, device, seed=None)

    for epoch in range(state.epoch, config.epochs):
        started = time.monotonic()
        loader = _loader(train_set, config, device, seed=config.seed + epoch, ranks=ranks)
        desc = f"epoch {epoch + 1}/{config.epochs}"
        total, n = _train_epoch(net, loader, optimizer, scaler, criterion, device, amp, desc,
                                progress and main, augment)  # fmt: skip
        if ranks is not None:
            distributed.average_buffers(model, ranks.world_size)
            total, rows = distributed.all_sum([total, n], device)
        else:
            rows = float(n)
        state.epoch = epoch + 1
        if schedule is not None:
            schedule.step()
        if main:
            _validate_and_save(model, card, config, paths, state, val_loader, device, amp,
                               train_loss=total / max(rows, 1), started=started,
                               progress=progress, log=log, optimizer=optimizer, scaler=scaler)
    if ranks is None:
        return _finish(config, paths, state, val_loader, series_ids_of(val_set), device, amp)
    digest = weights_sha256(model.state_dict())
    logger.info("rank %d of %d: final weights sha256 %s", ranks.rank, ranks.world_size, digest)
    digests = distributed.gather(digest, ranks.world_size)
    if len(set(digests)) != 1:
        raise ModelError(f"the ranks ended with different weights: {digests}")
    ddp = {"world_size": ranks.world_size, "backend": str(torch.distributed.get_backend()),
           "rank_weights_sha256": digests}  # fmt: skip
    result = _finish(config, paths, state, val_loader, series_ids_of(val_set), device, amp,
                     ddp=ddp) if main else None  # fmt: skip
    return distributed.broadcast(result)


def _lr_schedule(optimizer: torch.optim.Optimizer, config: TrainConfig, *,
                 done: int) -> LambdaLR | None:
    """The learning rate from epoch `done` on: a function of the epoch and the config only, so
    a resumed run (also one given more epochs) follows the schedule of its config."""
    for group in optimizer.param_groups:  # resume loaded the last run's rate
        group["lr"] = group["initial_lr"] = config.lr
    if config.lr_schedule == "constant":
        return None

    def cosine(epoch: int) -> float:
        return LR_FLOOR + (1 - LR_FLOOR) * (1 + math.cos(math.pi * epoch / config.epochs)) / 2

    return LambdaLR(optimizer, cosine, last_epoch=done - 1)


def _validate_and_save(
    model: nn.Module, card: ModelCard, config: TrainConfig, paths: dict[str, Path],
    state: TrainState, val_loader: DataLoader[Any], device: torch.device, amp: bool, *,
    train_loss: float, started: float, progress: bool,
    log: Callable[[dict[str, Any]], None] | None, optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
) -> None:  # fmt: skip
    """The end of epoch `state.epoch`: validate, write last.pt (and best.pt when it is the
    best so far) and the training state, log the history entry."""
    metrics = evaluate(*predict(model, val_loader, device, amp=amp, progress=progress))
    entry = {
        "epoch": state.epoch, "train_loss": train_loss, "val_loss": metrics.loss,
        "val_weighted_log_loss": metrics.weighted_log_loss, "val_auc": metrics.auc,
        "seconds": round(time.monotonic() - started, 2),
        "lr": optimizer.param_groups[0]["lr"],  # for the next epoch
    }  # fmt: skip
    state.history.append(entry)
    epoch_card = dataclasses.replace(card, metrics={"epoch": state.epoch,
                                                    "validation": metrics.to_dict()})
    save_checkpoint(paths["last"], model, epoch_card)
    if metrics.weighted_log_loss < state.best_loss or not paths["best"].is_file():
        state.best_loss, state.best_epoch = metrics.weighted_log_loss, state.epoch
        save_checkpoint(paths["best"], model, epoch_card)
    save_state(paths["state"], state, config, optimizer, scaler)
    logger.info("%s %s", config.architecture, entry)
    if log is not None:
        log(entry)


def _finish(config: TrainConfig, paths: dict[str, Path], state: TrainState,
            val_loader: DataLoader[Any], series_ids: list[str] | None, device: torch.device,
            amp: bool, *, ddp: dict[str, Any] | None = None) -> TrainResult:  # fmt: skip
    """Calibrate the best model on validation and choose its thresholds; write both into its card.

    Temperatures are fitted on the validation slices; thresholds are chosen on the validation
    series (maximum over slices, as the node calls) when the data says which slice belongs to
    which series, else on single images.
    """
    model, card = load_checkpoint(paths["best"], device=device)
    y, logits = predict_logits(model, val_loader, device, amp=amp)
    temperature = fit_temperatures(y, logits)
    p = apply_temperatures(logits, temperature)
    target = {"any": config.min_sensitivity_any}
    floor = {name: config.min_specificity_subtypes for name in card.labels if name != "any"}
    calibration = {
        "method": "temperature scaling per label, fitted on the validation slices",
        "nll_before": float(binary_cross_entropy(y, sigmoid(logits)).mean()),
        "nll_after": float(binary_cross_entropy(y, p).mean()),
    }
    extra: dict[str, Any] = {"calibration": calibration}
    if ddp is not None:  # how the ranks trained it, and that they agreed
        extra["distributed"] = ddp
    if series_ids is not None and len(series_ids) == len(y):
        point = series_operating_point(series_ids, y, p, target=target, floor=floor)
        thresholds, metrics = point.thresholds, point.image
        extra |= {"validation_series": point.series.to_dict(), "operating_point": point.summary()}
    else:
        thresholds = choose_thresholds(y, p, min_sensitivity=target, min_specificity=floor)
        metrics = evaluate(y, p, thresholds)
        extra["operating_point"] = {"level": "image (series unknown)", "target_sensitivity": target,
                                    "minimum_specificity": floor}
    card = dataclasses.replace(
        card, thresholds=thresholds, temperature=temperature, sha256="", created_at="",
        metrics={"epoch": state.best_epoch, "epochs": state.epoch, "validation": metrics.to_dict(),
                 **extra},
    )  # fmt: skip
    card = save_checkpoint(paths["best"], model, card)
    roc = plot_roc(y, p, config.checkpoint_dir / "best.roc.png")
    return TrainResult(
        best_checkpoint=paths["best"], last_checkpoint=paths["last"], train_state=paths["state"],
        roc_plot=roc, card=card, metrics=metrics, history=tuple(state.history),
    )  # fmt: skip

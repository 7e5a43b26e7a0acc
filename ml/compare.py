"""Train architectures on one patient split of a DICOM folder and tabulate them like the study.

The study's Table 2 compared its networks by loss, accuracy, TP, TN, FP, FN and AUC on one
validation set; `compare` does the same for any architectures of `ml.models`, adding the RSNA
weighted log loss and the AUC of each label. `load_split` and `train_on_split` are the steps
`ichtriage admin train` runs for a single architecture.
"""

from __future__ import annotations

import csv
import dataclasses
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ml.augment import BatchAugment
from ml.cache import SliceCache, build_cache
from ml.distributed import Distributed, build_cache_together
from ml.evaluate import evaluate_classifier
from ml.inference import Classifier
from ml.labels import LABELS
from ml.metrics import Metrics
from ml.models import architecture, build_model
from ml.rsna import ImageRecord, index_images, read_labels, split_by_patient
from ml.series import dataset_for
from ml.train import TrainConfig, TrainResult, train
from ml.windowing import FIT_SIZE

logger = logging.getLogger(__name__)

TABLE_MD = "compare.md"
TABLE_CSV = "compare.csv"
TEST_CSV = "compare-test.csv"


@dataclass(frozen=True)
class Split:
    """Labelled slices on disk, cut by patient into training and validation."""

    train: tuple[ImageRecord, ...]
    val: tuple[ImageRecord, ...]

    def describe(self) -> str:
        def count(records: Sequence[ImageRecord]) -> str:
            patients = len({r.patient_id for r in records})
            series = len({(r.study_uid, r.series_uid) for r in records})
            positive = sum(int(r.labels[0]) for r in records)
            return f"{len(records)} images ({positive} with a bleed), {series} series, {patients} patients"

        return f"training: {count(self.train)}; validation: {count(self.val)}"


def load_split(
    dicom_dir: str | os.PathLike[str], labels_csv: str | os.PathLike[str], *,
    val_fraction: float, seed: int,
    extra: Sequence[tuple[str | os.PathLike[str], str | os.PathLike[str]]] = (),
) -> Split:  # fmt: skip
    """Index the labelled `.dcm` files under dicom_dir and split them by patient.

    `extra` adds more (dicom_dir, labels_csv) sources, e.g. the node's feedback export; an
    image id found again takes the later source's labels (the newer word).
    """
    records = index_images(dicom_dir, read_labels(labels_csv))
    if not records:
        raise ValueError(f"dicom_dir: no .dcm file under {dicom_dir} has labels in {labels_csv}")
    if extra:
        by_id = {r.image_id: r for r in records}
        for more_dir, more_csv in extra:
            found = index_images(more_dir, read_labels(more_csv))
            logger.info("%d labelled images from %s over %s", len(found), more_csv, more_dir)
            by_id.update((r.image_id, r) for r in found)
        records = list(by_id.values())
    train_records, val_records = split_by_patient(records, val_fraction=val_fraction, seed=seed)
    if not train_records or not val_records:
        raise ValueError("dicom_dir: need images of at least two patients to split")
    return Split(tuple(train_records), tuple(val_records))


def build_split_caches(
    split: Split, cache_root: Path, *, windows: Sequence[str], input_size: int, workers: int = 0,
    ranks: Distributed | None = None, field_of_view_mm: float | None = None,
) -> tuple[SliceCache, SliceCache]:  # fmt: skip
    """(training, validation) caches under cache_root, one folder per windows, size and field
    of view.

    Slices are fitted to 512 pixels, or to `field_of_view_mm` millimetres, and resized to
    input_size exactly as `ml.inference` does. With `ranks` (torchrun), the ranks build each
    cache together and all read it.
    """
    fov = field_of_view_mm
    out_size = None if input_size == FIT_SIZE and fov is None else input_size
    folder = cache_root / (f"{'-'.join(windows)}-{input_size}px" + (f"-{fov:g}mm" if fov else ""))
    caches = []
    for part, records in (("train", split.train), ("val", split.val)):
        if ranks is None:
            caches.append(build_cache(records, folder / part, windows=windows, size=FIT_SIZE,
                                      out_size=out_size, workers=workers, field_of_view_mm=fov))
        else:
            caches.append(build_cache_together(ranks, records, folder / part, windows=windows,
                                               size=FIT_SIZE, out_size=out_size, workers=workers,
                                               field_of_view_mm=fov))
    return caches[0], caches[1]


def train_on_split(
    config: TrainConfig, split: Split, *, cache_root: Path, workers: int = 0,
    progress: bool = True, log: Callable[[dict[str, Any]], None] | None = None,
    augment: Callable[[Any], Any] | None = None,
    batch_augment: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ranks: Distributed | None = None,
) -> TrainResult:  # fmt: skip
    """Cache the split for `config`'s input settings and train (see `ml.train.train`).

    `augment` wraps the training dataset (e.g. in `ml.series.Augmented`); `batch_augment`
    changes each training batch (`ml.augment.BatchAugment`); `ranks`: this process's torchrun
    rank, for DistributedDataParallel (`ml.distributed`).
    """
    card = config.card()
    train_cache, val_cache = build_split_caches(
        split, cache_root, windows=card.windows, input_size=card.input_size, workers=workers,
        ranks=ranks, field_of_view_mm=card.field_of_view_mm)
    train_set = dataset_for(train_cache, config.architecture, card.context)
    val_set = dataset_for(val_cache, config.architecture, card.context)
    if augment is not None:
        train_set = augment(train_set)
    logger.info("%s: %d training and %d validation slices", config.architecture,
                len(train_cache), len(val_cache))  # fmt: skip
    return train(config, train_set, val_set, progress=progress, log=log, augment=batch_augment,
                 ranks=ranks)


# --- comparison ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Comparison:
    """One architecture's row: validation metrics of its best epoch (totals at 0.5)."""

    architecture: str
    input_size: int
    context: int
    parameters: int
    epochs: int
    train_seconds: float  # sum of the epochs (training + validation), cache building excluded
    checkpoint: Path
    metrics: Metrics
    test: Metrics | None = None  # on the test set, when one was given (image level)


def count_parameters(name: str, *, in_channels: int, input_size: int) -> int:
    with torch.device("meta"):  # shapes only
        model = build_model(name, in_channels=in_channels, input_size=input_size)
    return sum(p.numel() for p in model.parameters())


def compare(
    architectures: Sequence[str], split: Split, base: TrainConfig, out_dir: Path, *,
    workers: int = 0, progress: bool = True, augment: bool = False,
    log: Callable[[str, dict[str, Any]], None] | None = None,
    test: Sequence[ImageRecord] = (), test_name: str = "the test set",
) -> list[Comparison]:  # fmt: skip
    """Train each architecture on `split` with `base`'s settings; write the table; return rows.

    `test`: labelled slices none of the training saw (e.g. another phantom style, to measure
    transfer); each best checkpoint is also scored on them, series by series as the node
    does (`ml.evaluate.evaluate_classifier`), into a second table named by `test_name`.

    Each architecture runs at base.input_size raised to its smallest usable side (AlexNet's
    'valid' layers need 195), or at its own size when base.input_size is None. A sequence
    model follows the two-stage recipe of `ml.train` when `ichnet` was trained before it at
    the same size and context: it starts from that checkpoint with the backbone frozen.
    `augment` trains with `ml.augment.BatchAugment`.
    """
    if not architectures:
        raise ValueError("architectures: name at least one")
    for name in architectures:
        architecture(name)
    rows: list[Comparison] = []
    slice_models: dict[tuple[int, int], Path] = {}
    for name in architectures:
        spec = architecture(name)
        size = max(base.input_size or spec.input_size, spec.min_input_size)
        if base.input_size is not None and size != base.input_size:
            logger.warning("%s needs input >= %d: it runs at %d", name, spec.min_input_size, size)
        config = dataclasses.replace(
            base, architecture=name, checkpoint_dir=out_dir / name, input_size=size
        )
        card = config.card()
        pretrained = slice_models.get((size, card.context))
        if spec.kind == "sequence" and pretrained is not None and base.pretrained is None:
            config = dataclasses.replace(config, pretrained=pretrained, freeze_backbone=True)
        result = train_on_split(
            config, split, cache_root=out_dir / "cache", workers=workers, progress=progress,
            log=None if log is None else (lambda entry, name=name: log(name, entry)),  # type: ignore[misc]
            batch_augment=BatchAugment(card.windows) if augment else None,
        )  # fmt: skip
        if name == "ichnet":
            slice_models[(size, card.context)] = result.best_checkpoint
        tested = None
        if test:
            classifier = Classifier.load(result.best_checkpoint, device=base.device)
            tested = evaluate_classifier(classifier, test).image
        rows.append(Comparison(
            architecture=name, input_size=size, context=card.context,
            parameters=count_parameters(name, in_channels=card.in_channels, input_size=size),
            epochs=len(result.history),
            train_seconds=round(sum(h["seconds"] for h in result.history), 1),
            checkpoint=result.best_checkpoint, metrics=result.metrics, test=tested,
        ))  # fmt: skip
        write_table(rows, out_dir, note=split.describe(),  # a partial table survives a crash
                    test_name=test_name)
    return rows


_COLUMNS = ("model", "input", "params", "epochs", "train s", "loss", "accuracy", "TP", "TN",
            "FP", "FN", "AUC", "weighted log loss", *(f"AUC {label}" for label in LABELS))  # fmt: skip
_CSV_COLUMNS = ("architecture", "input_size", "slices", "parameters", "epochs", "train_seconds",
                "loss", "accuracy", "tp", "tn", "fp", "fn", "auc", "weighted_log_loss",
                *(f"auc_{label}" for label in LABELS))  # fmt: skip


def _cells(row: Comparison, m: Metrics) -> list[str]:
    per_label = [_num(m.per_label[label].auc) for label in LABELS]
    input_text = f"{row.input_size}" + (f" x{2 * row.context + 1}" if row.context else "")
    return [row.architecture, input_text, f"{row.parameters / 1e6:.2f} M", str(row.epochs),
            f"{row.train_seconds:.0f}", _num(m.loss), _num(m.accuracy), str(m.tp), str(m.tn),
            str(m.fp), str(m.fn), _num(m.auc), _num(m.weighted_log_loss), *per_label]  # fmt: skip


def _csv_cells(row: Comparison, m: Metrics) -> list[object]:
    return [row.architecture, row.input_size, 2 * row.context + 1, row.parameters, row.epochs,
            row.train_seconds, *map(_raw, (m.loss, m.accuracy)), m.tp, m.tn, m.fp, m.fn,
            *map(_raw, (m.auc, m.weighted_log_loss)),
            *(_raw(m.per_label[label].auc) for label in LABELS)]  # fmt: skip


def _num(value: float) -> str:
    return "n/a" if value != value else f"{value:.4f}"  # NaN: one class only


def _raw(value: float) -> str:
    return "" if value != value else f"{value:.6g}"


def write_table(rows: Sequence[Comparison], out_dir: Path, *, note: str = "",
                test_name: str = "the test set") -> tuple[Path, Path]:
    """compare.md (markdown tables with a legend) and compare.csv (plain numbers) in out_dir;
    with test figures also a second table in compare.md and compare-test.csv."""
    out_dir.mkdir(parents=True, exist_ok=True)
    tested = [row for row in rows if row.test is not None]
    legend = ("Validation figures of each model's best epoch. Loss: mean binary cross-entropy; "
              "accuracy, TP, TN, FP, FN: all label decisions at probability 0.5; AUC: micro "
              "(all labels pooled); input: side in pixels (x N: N adjacent slices as channels); "
              "train s: seconds over all epochs.")  # fmt: skip
    parts = [*_markdown(rows, lambda row: row.metrics), "", legend, *([note] if note else [])]
    if tested:
        parts += ["", f"The same models on {test_name} (image level, the same columns):", "",
                  *_markdown(tested, _test_metrics)]
    md, table = out_dir / TABLE_MD, out_dir / TABLE_CSV
    md.write_text("\n".join(parts) + "\n", encoding="utf-8")
    _write_csv(table, rows, lambda row: row.metrics)
    if tested:
        _write_csv(out_dir / TEST_CSV, tested, _test_metrics)
    return md, table


def _test_metrics(row: Comparison) -> Metrics:
    if row.test is None:
        raise ValueError(f"{row.architecture}: no test figures")
    return row.test


def _markdown(rows: Sequence[Comparison], metrics: Callable[[Comparison], Metrics]) -> list[str]:
    lines = ["| " + " | ".join(_COLUMNS) + " |", "|" + " --- |" * len(_COLUMNS)]
    return lines + ["| " + " | ".join(_cells(row, metrics(row))) + " |" for row in rows]


def _write_csv(path: Path, rows: Sequence[Comparison],
               metrics: Callable[[Comparison], Metrics]) -> None:
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(_CSV_COLUMNS)
        writer.writerows(_csv_cells(row, metrics(row)) for row in rows)

"""`ichtriage admin`: phantoms, training (`--nproc N`: under torchrun, `node.cli.ddp`),
evaluation, comparison, the demo model, the model registry and requeueing (`node.cli.models`),
retraining (`node.cli.retrain`), feedback export, tokens and stats (`node.cli.stats`).

torch and `ml` are imported inside the commands that need them, never when the parser is
built: `ichtriage serve --help` stays fast and the receiving processes never load torch.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from node.cli.models import UNMATCHED
from node.config import Settings
from node.logs import configure_logging

if TYPE_CHECKING:
    from ml.train import TrainConfig, TrainResult

DEFAULT_WINDOWS = "brain,subdural,bone"  # ml.windowing.DEFAULT_WINDOWS, without importing ml
LR_SCHEDULES = ("constant", "cosine")  # ml.train.LR_SCHEDULES, without importing ml
PHANTOM_STYLES = ("classic", "randomized", "varied", "polar")  # ml.phantom.STYLES, likewise
FIELD_OF_VIEW_MM = (50.0, 1000.0)  # ml.checkpoint.FIELD_OF_VIEW_MM, likewise


D = " (default: %(default)s)"


def _names(text: str) -> tuple[str, ...]:
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    if not names:
        raise argparse.ArgumentTypeError("give at least one name, comma-separated")
    return names


def field_of_view(text: str) -> float:
    """--field-of-view: millimetres in the range a model card takes, or "none" (0.0: fit 512
    pixels)."""
    if text.strip().lower() == "none":
        return 0.0
    try:
        mm = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of mm, nor none: {text!r}") from None
    low, high = FIELD_OF_VIEW_MM
    if not low <= mm <= high:
        raise argparse.ArgumentTypeError(f"must lie in {low:g}-{high:g} mm, got {text}")
    return mm


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--log-level", help="DEBUG, INFO, WARNING (default: INFO, or the setting)")


def _device(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", help="torch device: auto, cpu, cuda, cuda:1 "
                        "(default: auto, or the setting): auto is CUDA when available; one this "
                        "machine lacks ends the command at once, exit 1")  # fmt: skip


def _data(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add("--dicom-dir", type=Path, required=True, help="folder searched for <image id>.dcm files")
    add("--labels", type=Path, required=True, help="labels in the RSNA stage_2_train.csv format; "
        + UNMATCHED)


def _training(parser: argparse.ArgumentParser, *, epochs: int) -> None:
    add = parser.add_argument
    add("--out", type=Path, required=True, help="folder for checkpoints and the cache")
    add("--epochs", type=int, default=epochs, help="epochs" + D)
    add("--batch-size", type=int, default=16, help="slices, or series for sequence models" + D)
    add("--lr", type=float, default=1e-3, help="Adam learning rate" + D)
    add("--lr-schedule", choices=LR_SCHEDULES, default="constant",
        help="constant, or cosine: from --lr down to 2%% of it over the epochs" + D)
    add("--input-size", type=int, metavar="PX", help="side the model sees (default: the architecture's)")
    add("--field-of-view", type=field_of_view, metavar="MM",
        help="side in mm of the square around each slice's centre that the model sees, resized "
             "by the slice's PixelSpacing (default, or none: 512 pixels whatever their size)")
    add("--windows", type=_names, default=_names(DEFAULT_WINDOWS), metavar="A,B,C",
        help=f"display windows in channel order (default: {DEFAULT_WINDOWS})")
    add("--context", type=int, metavar="K",
        help="adjacent slices on each side stacked as channels (default: the architecture's)")
    add("--val-fraction", type=float, default=0.15, help="patients held out for validation" + D)
    add("--seed", type=int, default=0, help="patient split, weights and shuffling" + D)
    add("--augment", action="store_true",
        help="change each training batch at random: HU shift and scale, window jitter, flips, "
             "small affine and elastic moves, noise, blur, resize (ml.augment)")
    add("--workers", type=int, default=0, dest="loader_workers", metavar="N",
        help="processes decoding DICOM and loading batches, 0: this one" + D)
    _device(parser)


def extra_data(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--extra-data", nargs=2, type=Path, action="append", default=[],
                        metavar=("DIR", "CSV"),
                        help="more labelled images (repeatable), e.g. `admin feedback export "
                             "--with-files`'s OUT/dicom OUT/labels.csv; an image id found "
                             "again takes these labels")


def add_admin_parser(sub: Any) -> None:
    admin = sub.add_parser("admin", help="phantoms, training, evaluation, models")
    commands = admin.add_subparsers(dest="admin_command", required=True)
    _phantoms_parser(commands)
    _train_parser(commands)
    _evaluate_parser(commands)
    compare = commands.add_parser("compare",
                                  help="train several architectures on one split, tabulate them")  # fmt: skip
    compare.add_argument("--archs", type=_names, required=True, metavar="A,B,...",
                         help="architectures, e.g. vanilla,alexnet,resnet18,ichnet,ichnet_seq")
    _data(compare)
    compare.add_argument("--test-dicom-dir", type=Path, metavar="DIR",
                         help="also score each model on these slices, which no training saw "
                              "(e.g. another phantom style); needs --test-labels")
    compare.add_argument("--test-labels", type=Path, metavar="CSV",
                         help="labels of --test-dicom-dir, in the RSNA format; " + UNMATCHED)
    _training(compare, epochs=3)
    _common(compare)
    from node.cli.demo import add_demo_parser

    add_demo_parser(commands)
    conformance = commands.add_parser(
        "conformance", help="print the DICOM Conformance Statement (PS3.2) as Markdown")
    conformance.add_argument("--defaults", action="store_true",
                             help="describe the default settings (docs/conformance.md), not "
                                  "this installation's configuration and environment")
    conformance.add_argument("--config", type=Path,
                             help="TOML settings file (env: ICHTRIAGE_CONFIG)")
    _common(conformance)
    from node.cli.models import add_models_parser, add_requeue_parser

    add_models_parser(commands)
    add_requeue_parser(commands)
    from node.cli.retrain import add_retrain_parser

    add_retrain_parser(commands, _training, _data, extra_data)
    from node.cli.feedback import add_feedback_parser
    from node.cli.main import _setting_flags
    from node.cli.tokens import add_tokens_parser

    add_tokens_parser(commands, _setting_flags)
    add_feedback_parser(commands, _setting_flags)
    from node.cli.stats import add_stats_parser

    add_stats_parser(commands, _setting_flags)


def _phantoms_parser(commands: Any) -> None:
    phantoms = commands.add_parser("phantoms", help="write synthetic head-CT studies and labels.csv")
    add = phantoms.add_argument
    add("--out", type=Path, required=True, help="folder for <Study>/<Series>/ID_*.dcm, labels.csv")
    add("--studies", type=int, required=True, help="studies, one series each")
    add("--seed", type=int, required=True, help="the same seed writes the same files")
    add("--slices", type=int, default=24, help="slices per series" + D)
    add("--size", type=int, default=512, metavar="PX",
        help="matrix; real head CT is 512, keep it for training" + D)
    add("--positive-fraction", type=float, default=0.6, help="studies with a bleed" + D)
    add("--style", choices=PHANTOM_STYLES, default="classic",
        help="classic: the fixed look; randomized: domain randomization with mimics (train); "
             "varied: randomized with aged subdurals, patchy blood, blood along the falx, a "
             "dense falx and scalp hematomas, labelled where the blood shows; polar: the "
             "second style, written apart (validate only)" + D)
    add("--workers", type=int, default=os.cpu_count() or 1, metavar="N",
        help="processes writing studies (the same files whatever N; default: one per CPU, "
             "%(default)s here)")
    _common(phantoms)


def _train_parser(commands: Any) -> None:
    train = commands.add_parser("train", help="train one architecture on a patient split")
    train.add_argument("--arch", required=True, help="e.g. ichnet, ichnet_seq, vanilla, resnet18")
    _data(train)
    _training(train, epochs=10)
    train.add_argument("--pretrained", type=Path, metavar="PATH",
                       help="local weights or checkpoint to start from")
    train.add_argument("--freeze-backbone", action="store_true", help="train the head only")
    train.add_argument("--resume", action="store_true", help="continue the run in --out")
    extra_data(train)
    train.add_argument("--nproc", type=int, default=1, metavar="N",
                       help="train as N processes under torchrun with DistributedDataParallel "
                            "(gloo on the CPU, NCCL on CUDA: one GPU each); --batch-size is "
                            "split among them" + D)
    train.add_argument("--register", metavar="NAME",
                       help="import the best checkpoint into the node's model registry as a "
                            "candidate named NAME (then `admin models gate NAME ...`)")
    train.add_argument("--data-dir", type=Path, help="the node's data directory, for --register "
                       "(default: ./var, or the setting)")
    train.add_argument("--db-url", help="the node's database, for --register (default: SQLite "
                       "in the data directory)")
    _common(train)


def _evaluate_parser(commands: Any) -> None:
    evaluate = commands.add_parser(
        "evaluate", help="score a model on labelled DICOM, at image and series level"
    )
    evaluate.add_argument("--model", dest="model_ref", metavar="NAME_OR_PATH",
                          help="checkpoint file, a name in the model registry, or 'demo' "
                               "for the shipped model (default: the registry's active model)")  # fmt: skip
    _data(evaluate)
    evaluate.add_argument("--data-dir", type=Path, help="the node's data directory, for a model "
                          "named in its registry (default: ./var, or the setting)")
    evaluate.add_argument("--db-url", help="the node's database (default: SQLite in the data "
                          "directory)")
    evaluate.add_argument("--json", action="store_true", help="print one JSON object only")
    evaluate.add_argument("--roc", type=Path, metavar="PNG", help="write image-level ROC curves")
    evaluate.add_argument("--report", type=Path, metavar="DIR",
                          help="write a report folder: ROC and PR curves, reliability, confusion "
                               "matrices, the worst series, report.json")  # fmt: skip
    _device(evaluate)
    _common(evaluate)


def run_admin(args: argparse.Namespace, settings: Settings) -> int:
    """Run one admin command. Bad input ends it with one line, never a traceback: exit 2 (or
    the command's own codes, node.cli.models.Exit); a --device this machine lacks, exit 1,
    before any work (node.startup.check_device, as `serve` and `worker` check it)."""
    from ml.errors import MLError
    from node.startup import StartupError, check_device
    from storage.errors import StorageError

    configure_logging(settings.log_level)
    if hasattr(args, "device"):  # every command taking --device: the one it will use
        args.device = settings.device
        try:
            check_device(settings.device)
        except StartupError as exc:
            print(f"{_where(args)}: {exc}", file=sys.stderr)
            return 1
    try:
        return _dispatch(args, settings)
    except (MLError, StorageError, ValueError, OSError) as exc:  # bad input: say so, no traceback
        print(f"{_where(args)}: {exc}", file=sys.stderr)
        return 2


def _where(args: argparse.Namespace) -> str:
    """`ichtriage admin COMMAND [SUBCOMMAND]`, as messages name the command."""
    sub = [getattr(args, f"{args.admin_command}_command", None)]
    return " ".join(["ichtriage admin", args.admin_command, *filter(None, sub)])


def _dispatch(args: argparse.Namespace, settings: Settings) -> int:
    if args.admin_command in ("models", "requeue"):
        from node.cli.models import run_models, run_requeue

        return (run_models if args.admin_command == "models" else run_requeue)(args, settings)
    if args.admin_command == "tokens":
        from node.cli.tokens import run_tokens

        return run_tokens(args, settings)
    if args.admin_command == "stats":
        from node.cli.stats import run_stats

        return run_stats(args, settings)
    if args.admin_command == "feedback":
        from node.cli.feedback import run_feedback

        return run_feedback(args, settings)
    commands = {"retrain": _retrain, "phantoms": _phantoms, "train": _train, "evaluate": _evaluate,
                "compare": _compare, "demo-model": _demo_model,
                "conformance": _conformance}  # fmt: skip
    return commands[args.admin_command](args, settings)


def _demo_model(args: argparse.Namespace, settings: Settings) -> int:
    from node.cli.demo import run_demo_model

    return run_demo_model(args, settings)


def _conformance(args: argparse.Namespace, settings: Settings) -> int:
    from node.conformance import render

    sys.stdout.write(render(Settings() if args.defaults else settings))
    return 0


def _phantoms(args: argparse.Namespace, settings: Settings) -> int:
    from ml.phantom import write_dataset

    csv_path = write_dataset(args.out, studies=args.studies, seed=args.seed, slices=args.slices,
                             size=args.size, positive_fraction=args.positive_fraction,
                             style=args.style, workers=args.workers)  # fmt: skip
    print(f"wrote {args.studies} {args.style} studies of about {args.slices} slices ({args.size} px)"
          f" under {args.out}")
    print(f"labels: {csv_path}")
    # labels.csv lies beside the studies: a directory scan without a pattern stops on it.
    print(f"send them: storescu +sd +r +sp '*.dcm' -aec {settings.ae_title} "
          f"{settings.bind} {settings.port} {args.out}")
    return 0


def _config(args: argparse.Namespace, settings: Settings, architecture: str,
            checkpoint_dir: Path) -> TrainConfig:  # fmt: skip
    from ml.train import TrainConfig

    return TrainConfig(
        checkpoint_dir=checkpoint_dir, architecture=architecture, epochs=args.epochs,
        batch_size=args.batch_size, lr=args.lr, lr_schedule=args.lr_schedule, seed=args.seed,
        num_workers=args.loader_workers,
        device=settings.device, input_size=args.input_size,
        field_of_view_mm=args.field_of_view or None, windows=args.windows,
        context=args.context, pretrained=getattr(args, "pretrained", None),
        freeze_backbone=getattr(args, "freeze_backbone", False),
        resume=getattr(args, "resume", False),
        training_data=f"{args.labels} over {args.dicom_dir}"
                      + "".join(f" + {csv} over {folder}"
                                for folder, csv in getattr(args, "extra_data", []))
                      + f"; patient split seed {args.seed}, {args.val_fraction:.0%} held out",
    )  # fmt: skip


def _epoch_line(entry: dict[str, Any]) -> str:
    return (f"epoch {entry['epoch']}: train loss {entry['train_loss']:.4f}, validation "
            f"weighted log loss {entry['val_weighted_log_loss']:.4f}, AUC {entry['val_auc']:.4f} "
            f"({entry['seconds']:.0f} s)")  # fmt: skip


def _retrain(args: argparse.Namespace, settings: Settings) -> int:
    from node.cli.retrain import run_retrain

    return run_retrain(args, settings, lambda a, s: _trained(a, s).best_checkpoint)


def _train(args: argparse.Namespace, settings: Settings) -> int:
    from node.cli.ddp import is_rank, train_with_torchrun

    if args.nproc < 1:
        raise ValueError(f"--nproc: must be >= 1, got {args.nproc}")
    if args.nproc > 1 and not is_rank():
        return train_with_torchrun(args, settings)
    result = _trained(args, settings)
    if is_rank():
        return 0  # a torchrun rank: the launching command registers
    if args.register:
        from node.cli.models import register_trained

        return register_trained(result.best_checkpoint, args.register, settings)
    return 0


def _trained(args: argparse.Namespace, settings: Settings) -> TrainResult:
    """Train as `admin train` does; under torchrun as this rank, only rank 0 printing."""
    from ml import distributed
    from ml.augment import BatchAugment
    from ml.compare import load_split, train_on_split
    from ml.evaluate import metric_lines
    from ml.inference import resolve_device

    ranks = distributed.from_environment()
    main = ranks is None or ranks.is_main
    say = print if main else _silent
    if ranks is not None:
        distributed.start(ranks, resolve_device(settings.device))
    try:
        config = _config(args, settings, args.arch, args.out)
        split = load_split(args.dicom_dir, args.labels, val_fraction=args.val_fraction,
                           seed=args.seed, extra=getattr(args, "extra_data", []))
        say(split.describe(), flush=True)
        result = train_on_split(
            config, split, cache_root=args.out / "cache", workers=args.loader_workers,
            log=lambda entry: say(_epoch_line(entry), flush=True), progress=main,
            batch_augment=BatchAugment(config.card().windows) if args.augment else None,
            ranks=ranks,
        )  # fmt: skip
    finally:
        distributed.finish()
    if ranks is not None:
        ddp = result.card.metrics["distributed"]
        say(f"{ddp['world_size']} ranks ({ddp['backend']}) ended with the same weights: "
            f"sha256 {ddp['rank_weights_sha256'][0]}")
    say(f"\nvalidation, best epoch {result.card.metrics.get('epoch')} (image level):")
    say("\n".join(metric_lines({"validation": result.metrics})))
    say(f"\ncheckpoint: {result.best_checkpoint}")
    return result


def _silent(*args: object, **kwargs: Any) -> None:
    """print's stand-in on torchrun ranks other than 0."""


def _model_file(reference: str | None, settings: Settings) -> Path:
    """The checkpoint `--model` names: 'demo' (the shipped one), a file, or a name in the
    node's model registry; without it, the registry's active model (or, before the node's
    first start, the `model` setting or the shipped one)."""
    from ml.shipped import shipped_checkpoint

    if reference == "demo":
        return shipped_checkpoint()
    if reference is not None and (Path(reference).is_file() or "/" in reference
                                  or reference.endswith(".pt")):
        return Path(reference)
    from storage.db import open_existing
    from storage.errors import DatabaseMissingError
    from storage.registry import ModelRegistry

    try:
        engine = open_existing(settings.database_url)
    except DatabaseMissingError as exc:
        if reference is not None:
            raise ValueError(f"--model {reference}: no such file, and no registry to look the "
                             f"name up in: {exc}") from exc
        return Path(settings.model) if settings.model else shipped_checkpoint()
    try:
        registry = ModelRegistry(engine, settings.models_dir)
        entry = registry.get(reference) if reference is not None else registry.active()
    finally:
        engine.dispose()
    if entry is None:
        return Path(settings.model) if settings.model else shipped_checkpoint()
    return entry.file_path


def _evaluate(args: argparse.Namespace, settings: Settings) -> int:
    from ml.evaluate import evaluate_classifier, format_report, to_json
    from ml.inference import Classifier
    from ml.metrics import plot_roc
    from ml.rsna import index_images, read_labels

    path = _model_file(args.model_ref, settings)
    classifier = Classifier.load(path, device=settings.device)
    records = index_images(args.dicom_dir, read_labels(args.labels))
    if not records:
        raise ValueError(f"no .dcm file under {args.dicom_dir} has labels in {args.labels}")
    evaluation = evaluate_classifier(classifier, records, batch_size=settings.batch_size)
    if args.roc is not None:
        plot_roc(evaluation.y, evaluation.prob, args.roc)
    if args.report is not None:
        from ml.report import write_report

        write_report(evaluation, args.report)
    if args.json:
        report = to_json(evaluation)
        report["model"]["path"] = str(path)
        print(json.dumps(report, allow_nan=False))
        return 0
    print(f"checkpoint: {path}")
    print(format_report(evaluation))
    if args.roc is not None:
        print(f"ROC curves (image level): {args.roc}")
    if args.report is not None:
        print(f"report: {args.report}")
    return 0


def _compare(args: argparse.Namespace, settings: Settings) -> int:
    from ml.compare import TABLE_CSV, TABLE_MD, compare, load_split
    from ml.rsna import index_images, read_labels

    if (args.test_dicom_dir is None) != (args.test_labels is None):
        raise ValueError("--test-dicom-dir and --test-labels: give both or neither")
    test = []
    if args.test_dicom_dir is not None:
        test = index_images(args.test_dicom_dir, read_labels(args.test_labels))
        if not test:
            raise ValueError(f"--test-dicom-dir: no .dcm file under {args.test_dicom_dir} has "
                             f"labels in {args.test_labels}")
    split = load_split(args.dicom_dir, args.labels, val_fraction=args.val_fraction, seed=args.seed)
    print(split.describe(), flush=True)
    compare(
        args.archs, split, _config(args, settings, args.archs[0], args.out), args.out,
        workers=args.loader_workers, augment=args.augment,
        log=lambda name, entry: print(f"{name} {_epoch_line(entry)}", flush=True),
        test=test, test_name=f"{args.test_dicom_dir} ({len(test)} slices)",
    )  # fmt: skip
    print((args.out / TABLE_MD).read_text(encoding="utf-8"))
    print(f"table: {args.out / TABLE_MD}, {args.out / TABLE_CSV}")
    return 0

"""`ichtriage admin demo-model`: the shipped demo model's recipe (`ml.demo.DemoRecipe`) from the
command line, trained by `ml.demo.train_demo_model`. Without options it is the shipped recipe;
`--style` picks another style's, and the other options change it."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from node.cli.admin import (
    LR_SCHEDULES,
    PHANTOM_STYLES,
    D,
    _common,
    _device,
    _epoch_line,
    field_of_view,
)
from node.config import Settings

if TYPE_CHECKING:  # torch and ml are imported by the command, not by the parser
    from ml.demo import DemoRecipe


def add_demo_parser(commands: Any) -> None:
    """`admin demo-model` and its options."""
    demo = commands.add_parser("demo-model",
                               help="generate phantoms and train the shipped demo model")  # fmt: skip
    add = demo.add_argument
    add("--out", type=Path, help="checkpoint to write (default: ichnet_demo.pt in the ml package)")
    add("--seed", type=int, default=1, help="phantoms, split and training" + D)
    add("--studies", type=int, default=400, help="phantom studies" + D)
    add("--slices", type=int, default=24, help="slices per phantom series, on average" + D)
    add("--style", choices=PHANTOM_STYLES, default="randomized",
        help="phantoms to train on; the styles but classic also take more negatives, a larger "
             "validation split and ml.augment (polar: only to measure transfer); the options "
             "below default to the style's recipe (randomized: the shipped model's; varied: "
             "the same with --lr-schedule cosine)" + D)
    add("--input-size", type=int, default=128, metavar="PX", help="side the model sees" + D)
    add("--field-of-view", type=field_of_view, metavar="MM",
        help="side in mm of the square the model sees, whatever the pixel size, or none: 512 "
             "pixels (default: the style's recipe)")
    add("--epochs", type=int, help="epochs of the slice stage, ichnet (randomized and varied 10, else 12)")
    add("--series-epochs", type=int,
        help="epochs of the series stage, ichnet_seq (randomized and varied 3, else 4)")
    add("--lr-schedule", choices=LR_SCHEDULES,
        help="learning rate over the epochs of both stages: constant, or cosine down to 2%% "
             "(default: the style's recipe)")
    add("--classic-studies", type=int, metavar="N",
        help="with another style: N classic studies besides, so the node's own phantoms stay "
             "in what the model has seen (randomized and varied 100, else 0)")
    add("--work-dir", type=Path,
        help="keep phantoms, caches and stages here (default: a temporary folder)")
    add("--workers", type=int, default=0, dest="loader_workers", metavar="N",
        help="processes loading training batches, 0: this one" + D)
    add("--prepare-workers", type=int, default=os.cpu_count() or 1, metavar="N",
        help="processes writing the phantoms and decoding them into the caches (the same files "
             "whatever N; default: one per CPU, %(default)s here)")
    _device(demo)
    _common(demo)


def demo_recipe(args: argparse.Namespace) -> DemoRecipe:
    """The recipe `admin demo-model` trains: the style's, changed by the options given."""
    from ml.demo import DemoRecipe

    given = {"slice_epochs": args.epochs, "series_epochs": args.series_epochs,
             "classic_studies": args.classic_studies, "lr_schedule": args.lr_schedule}  # fmt: skip
    if args.field_of_view is not None:  # 0.0: "none" given
        given["field_of_view_mm"] = args.field_of_view or None
    return DemoRecipe.for_style(
        args.style, seed=args.seed, studies=args.studies, slices=args.slices,
        input_size=args.input_size, **{k: v for k, v in given.items() if v is not None})


def run_demo_model(args: argparse.Namespace, settings: Settings) -> int:
    from ml.demo import train_demo_model
    from ml.evaluate import model_summary
    from ml.shipped import shipped_checkpoint

    recipe = demo_recipe(args)
    out = args.out or shipped_checkpoint()
    print(f"training the demo model: {recipe.command()}", flush=True)
    result = train_demo_model(
        out, recipe=recipe, work_dir=args.work_dir, workers=args.loader_workers,
        prepare_workers=args.prepare_workers, device=settings.device,
        log=lambda name, entry: print(f"{name} {_epoch_line(entry)}", flush=True),
    )  # fmt: skip
    validation = result.card.metrics["validation"]
    aucs = ", ".join(f"{name} {m['auc']:.4f}" for name, m in validation["per_label"].items()
                     if m["auc"] is not None)  # fmt: skip
    print(result.split)
    print(f"validation (image level): weighted log loss {validation['weighted_log_loss']:.4f}; "
          f"AUC {aucs}")
    print(f"seconds: {json.dumps(result.seconds)}")
    print(json.dumps(model_summary(result.card), indent=2))
    print(f"checkpoint: {result.checkpoint} (card: {result.checkpoint}.json)")
    return 0

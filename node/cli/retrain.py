"""`ichtriage admin retrain`: train a candidate, register it, gate it against the active model
on a fixed held-out set, all as one run under the retraining lock (storage.retraining: one at
a time, across processes and restarts). The run's row records the candidate and the gate's
decision, or the error; the registry records the decision on the model.

Without an active model it is refused at once (exit 4, nothing trained, no run recorded):
the gate has nothing to compare with. With --min-new-labels N it runs only when readers gave at least N feedback labels since the
start of the last retraining that ended well (exit 4 otherwise, nothing started); with
--with-feedback it trains on the node's own feedback export (`admin feedback export
--with-files`, written under --out) as well as on --dicom-dir/--labels.

Runs at lower CPU priority (nice 10) so a node on the same host keeps triaging first.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from node.cli import audit
from node.cli.models import UNMATCHED, Exit, gate_options, who
from node.config import Settings

NICENESS = 10


def add_retrain_parser(commands: Any, training: Any, data: Any, extra_data: Any) -> None:
    """`training`, `data` and `extra_data` add `admin train`'s options (node.cli.admin)."""
    retrain = commands.add_parser(
        "retrain", help="train a candidate, register it and gate it against the active model, "
                        "one run at a time (exit 0 promoted, 4 kept or busy)")
    retrain.add_argument("--arch", default="ichnet", help="architecture (default: %(default)s)")
    data(retrain)
    training(retrain, epochs=3)
    add = retrain.add_argument
    add("--heldout-dir", type=Path, required=True,
        help="the fixed held-out set both models are measured on")
    add("--heldout-labels", type=Path, required=True, help="its labels (RSNA CSV); " + UNMATCHED)
    add("--name", help="the candidate's registry name (default: retrained-<UTC time>)")
    extra_data(retrain)
    add("--with-feedback", action="store_true",
        help="also train on the node's feedback export (written to OUT/feedback)")
    add("--resume", action="store_true",
        help="continue a run that was cut off in --out from its last finished epoch")
    add("--min-new-labels", type=int, default=0, metavar="N",
        help="run only when at least N feedback labels were given since the start of the "
             "last retraining that ended well (default: %(default)s, always run)")
    gate_options(retrain)
    add("--data-dir", type=Path, help="the node's data directory (default: ./var, or the setting)")
    add("--db-url", help="the node's database (default: SQLite in the data directory)")
    add("--log-level", help="DEBUG, INFO, WARNING (default: INFO, or the setting)")


def _alive(owner: str) -> bool:
    """Whether the owner (host:pid) of a running retraining still runs; another host's is
    taken to be alive (its lock is its own to release)."""
    host, _, pid = owner.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return True
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _add_feedback(args: argparse.Namespace, engine: Any, settings: Settings) -> None:
    """Export the feedback with its slices under --out and add it to the training data."""
    from node.cli.feedback import export_feedback
    from storage.files import FileStore

    exported = export_feedback(engine, FileStore(settings.files_dir), args.out / "feedback",
                               with_files=True, why=", for admin retrain")
    print(f"feedback: {exported.studies} studies, {exported.slices} slices of studies read "
          f"as negative", flush=True)
    if exported.slices:
        args.extra_data = [*args.extra_data, [exported.dicom_dir, exported.labels_csv]]


def run_retrain(args: argparse.Namespace, settings: Settings,
                train: Any) -> int:
    """`train(args, settings) -> Path` trains as `admin train` does; returns best.pt."""
    from node.cli.models import gate_candidate
    from node.triage.registry import import_checkpoint
    from storage.db import open_existing
    from storage.errors import DatabaseMissingError
    from storage.feedback import FeedbackStore
    from storage.registry import ModelRegistry
    from storage.retraining import RetrainingBusyError, RetrainingLog

    try:
        engine = open_existing(settings.database_url)
    except DatabaseMissingError as exc:
        print(f"ichtriage admin retrain: {exc}", file=sys.stderr)
        return Exit.NO_DATABASE
    log = RetrainingLog(engine)
    if args.min_new_labels > 0:
        since = log.last_done_start()
        new = FeedbackStore(engine).count_since(since)
        if new < args.min_new_labels:
            print(f"skipped: {new} feedback labels since "
                  f"{'the start' if since is None else f'{since:%Y-%m-%d %H:%M:%S} UTC'}, "
                  f"{args.min_new_labels} needed")
            engine.dispose()
            return Exit.REFUSED
    if ModelRegistry(engine, settings.models_dir).active() is None:  # nothing to gate against
        print("ichtriage admin retrain: refused: no model is active to compare a candidate "
              "with (`ichtriage admin models list`, then `... models promote NAME`)",
              file=sys.stderr)
        engine.dispose()
        return Exit.REFUSED
    try:
        run = log.start(f"{socket.gethostname()}:{os.getpid()}", alive=_alive)
    except RetrainingBusyError as exc:
        print(f"ichtriage admin retrain: refused: {exc}", file=sys.stderr)
        engine.dispose()
        return Exit.REFUSED
    os.nice(NICENESS)
    name = args.name or f"retrained-{datetime.now(UTC):%Y%m%d-%H%M%S}"
    try:
        registry = ModelRegistry(engine, settings.models_dir)
        if args.with_feedback:
            _add_feedback(args, engine, settings)
        best = train(args, settings)
        entry = import_checkpoint(registry, best, name=name, actor=who(),
                                  reason="trained by admin retrain")
        audit.record(engine, "model_import",
                     detail=f"{entry.name} {entry.version} as a candidate, by admin retrain")
        decision, active = gate_candidate(
            registry, name, dicom_dir=args.heldout_dir, labels=args.heldout_labels,
            metric=args.metric, min_sensitivity=args.min_sensitivity, margin=args.margin,
            device=settings.device, actor=who())
    except BaseException as exc:
        log.finish(run, ok=False, candidate=name, outcome=f"{type(exc).__name__}: {exc}")
        engine.dispose()
        raise
    log.finish(run, ok=True, candidate=name, outcome=decision.reason)
    engine.dispose()
    verdict = "promoted" if decision.promote else "kept as a candidate"
    print(f"{name} vs {active}: {verdict}: {decision.reason}")
    return Exit.OK if decision.promote else Exit.REFUSED

"""`ichtriage admin models ...` and `ichtriage admin requeue`: the admin's model life cycle.

Exit codes (every subcommand): 0 done; 1 the database is missing or unreachable; 2 bad input
(a checkpoint that is missing, corrupt or not what its card says, a malformed argument);
3 an unknown model name or study; 4 refused by the model's state (promote a retired or the
active one, retire the active one, nothing to roll back to, a name or file registered
already), and a gate that kept its candidate. A refusal changes nothing, but a gate's
decision is recorded either way.

Every change (import, promote, rollback, retire, a gate's decision, each series requeued) is
also an `audit_event` row with actor `cli:<OS user>` (node.cli.audit) naming the model or the
study; `--by` and `--reason` are kept in its detail.
"""

from __future__ import annotations

import argparse
import enum
import json
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

from node.cli import audit
from node.cli.audit import who
from node.cli.table import format_table
from node.config import Settings

# The --labels help of every command reading labels over a folder of images (ml.rsna).
UNMATCHED = ("labelled IDs without an image under the folder are left out with one warning "
             "line (their count, the first few), e.g. the full stage_2_train.csv over a subset; "
             "a malformed row, or no labelled image at all, is an error (exit 2)")


class Exit(enum.IntEnum):
    OK = 0
    NO_DATABASE = 1
    BAD_INPUT = 2
    NOT_FOUND = 3
    REFUSED = 4


def _node(parser: argparse.ArgumentParser, *, models: bool = True) -> argparse.ArgumentParser:
    """Where the node keeps its database (and, with `models`, the registry's files)."""
    add = parser.add_argument
    add("--data-dir", type=Path, help="the node's data directory"
        + ("; imported models are copied to <data-dir>/models" if models else "")
        + " (default: ./var, or the setting)")
    add("--db-url", help="the node's database (default: SQLite in the data directory)")
    add("--config", type=Path, help="TOML settings file (env: ICHTRIAGE_CONFIG)")
    add("--log-level", help="DEBUG, INFO, WARNING (default: INFO, or the setting)")
    return parser


def _by_and_reason(parser: argparse.ArgumentParser,
                   kept: str = "kept with the decision and in the audit record") -> None:
    parser.add_argument("--reason", default="", help=f"why: {kept}")
    parser.add_argument("--by", default=None, metavar="NAME",
                        help="who decides (default: the user running the command)")


def add_models_parser(commands: Any) -> None:
    models = commands.add_parser(
        "models", help="the model registry: list, show, import, promote, rollback, retire",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = models.add_subparsers(dest="models_command", required=True)
    listing = _node(sub.add_parser("list", help="every registered model, with its state and the "
                                          "reason of the last decision"))
    listing.add_argument("--json", action="store_true", help="one JSON array")
    show = _node(sub.add_parser("show", help="one model: card, metrics and every decision on it"))
    show.add_argument("name")
    show.add_argument("--json", action="store_true", help="one JSON object")
    imp = _node(sub.add_parser("import", help="verify a checkpoint and register it as a "
                                              "candidate"))
    imp.add_argument("path", type=Path, help="checkpoint file (ml.checkpoint format)")
    imp.add_argument("--name", help="registry name (default: <file stem>-<8 hex of the weights>)")
    imp.add_argument("--version", help="(default: the weights' sha256, 12 hex digits)")
    imp.add_argument("--activate", action="store_true", help="make it the active model at once")
    _by_and_reason(imp)
    promote = _node(sub.add_parser("promote", help="make a model the active one; workers "
                                                   "pick it up before their next job"))
    promote.add_argument("name")
    _by_and_reason(promote)
    rollback = _node(sub.add_parser("rollback",
                                    help="return to the model active before this one"))
    _by_and_reason(rollback)
    retire = _node(sub.add_parser("retire", help="take a candidate out of service for good"))
    retire.add_argument("name")
    _by_and_reason(retire)
    _gate_parser(sub)


def _gate_parser(sub: Any) -> None:
    gate = _node(sub.add_parser(
        "gate", help="evaluate a candidate and the active model on the same held-out set; "
                     "promote the candidate only if it is better and keeps sensitivity(any) "
                     "(exit 0 promoted, 4 kept as a candidate; the reason is recorded)"))
    gate.add_argument("name", help="the candidate")
    gate.add_argument("--dicom-dir", type=Path, required=True,
                      help="held-out set: <image id>.dcm files")
    gate.add_argument("--labels", type=Path, required=True,
                      help="its labels, RSNA stage_2_train.csv format; " + UNMATCHED)
    gate_options(gate)
    gate.add_argument("--device", help="torch device: auto, cpu, cuda, cuda:1 (default: auto, "
                      "or the setting); one this machine lacks: exit 1, before any work")
    gate.add_argument("--json", action="store_true", help="one JSON object")
    gate.add_argument("--by", default=None, metavar="NAME",
                      help="who decides (default: the current user)")


def gate_options(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add("--metric", choices=("weighted_log_loss", "auc_any"), default="weighted_log_loss",
        help="what 'better' means (default: %(default)s)")
    add("--margin", type=float, default=0.0, help="by at least this much (default: %(default)s)")
    add("--min-sensitivity", type=float, default=0.95, metavar="S",
        help="sensitivity(any) the triage requires at the operating threshold; the candidate "
             "keeps the active model's, up to this (default: %(default)s)")


def add_requeue_parser(commands: Any) -> None:
    requeue = _node(commands.add_parser(
        "requeue", help="queue triaged or failed series again (after a model or device fix)"),
        models=False)
    which = requeue.add_mutually_exclusive_group(required=True)
    which.add_argument("--failed", action="store_true", help="every failed series")
    which.add_argument("--study", metavar="UID", help="one study, by StudyInstanceUID")
    which.add_argument("--since", type=_when, metavar="TIME",
                       help="every series received since TIME (ISO 8601 with a zone, e.g. "
                            "2026-11-30T08:00:00Z)")
    requeue.add_argument("--dry-run", action="store_true", help="list, queue nothing")
    requeue.add_argument("--json", action="store_true", help="one JSON array")
    _by_and_reason(requeue, kept="kept in the audit record (audit_event, actor cli:<OS "
                               "user>) of each series queued; the series' status reason "
                               "shows it only until its new result")


def _when(text: str) -> datetime:
    try:
        return datetime.fromisoformat(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r} is not an ISO 8601 time") from exc


def run_models(args: argparse.Namespace, settings: Settings) -> int:
    from ml.errors import MLError
    from storage.db import open_existing
    from storage.errors import DatabaseMissingError
    from storage.registry import (
        DuplicateModelError,
        ModelRegistry,
        ModelStateError,
        RegistryError,
        UnknownModelError,
    )

    where = f"ichtriage admin models {args.models_command}"
    try:
        engine = open_existing(settings.database_url)
    except DatabaseMissingError as exc:
        print(f"{where}: {exc}", file=sys.stderr)
        return Exit.NO_DATABASE
    registry = ModelRegistry(engine, settings.models_dir)
    try:
        return _MODELS[args.models_command](registry, args)
    except UnknownModelError as exc:
        print(f"{where}: {exc}", file=sys.stderr)
        return Exit.NOT_FOUND
    except (ModelStateError, DuplicateModelError) as exc:
        print(f"{where}: refused: {exc}", file=sys.stderr)
        return Exit.REFUSED
    except (MLError, RegistryError, ValueError, OSError) as exc:
        print(f"{where}: {exc}", file=sys.stderr)
        return Exit.BAD_INPUT
    finally:
        engine.dispose()


def _audit(registry: Any, action: str, entry: Any, args: argparse.Namespace,
           what: str = "") -> None:
    """The audit record of a change to the registry: `model_<action>`, the model's name and
    version, `--by` and `--reason` when given."""
    by = f" by {args.by}" if getattr(args, "by", None) else ""
    reason = f": {args.reason}" if getattr(args, "reason", "") else ""
    audit.record(registry.engine, f"model_{action}",
                 detail=f"{entry.name} {entry.version}{what}{by}{reason}")


def _auc(metrics: dict[str, Any]) -> str:
    validation = metrics.get("validation")
    value = validation.get("auc") if isinstance(validation, dict) else None
    return f"{value:.4f}" if isinstance(value, float) else "-"


def _list(registry: Any, args: argparse.Namespace) -> int:
    entries = registry.entries()
    if args.json:
        print(json.dumps([e.to_json() for e in entries], allow_nan=False))
        return Exit.OK
    if not entries:
        print("no model is registered yet: the node registers its model on first start, or "
              "`ichtriage admin models import PATH`")
        return Exit.OK
    rows = [(e.name, e.version, e.architecture, e.state.value, _auc(e.metrics),
             e.created_at.strftime("%Y-%m-%d %H:%M"),
             f"{e.promoted_at:%Y-%m-%d %H:%M} {e.promoted_by}" if e.promoted_at else "-",
             e.reason or "-") for e in entries]
    print(format_table(("NAME", "VERSION", "ARCHITECTURE", "STATE", "VAL AUC", "CREATED",
                        "PROMOTED", "LAST DECISION"), rows))
    return Exit.OK


def _show(registry: Any, args: argparse.Namespace) -> int:
    entry = registry.get(args.name)
    history = registry.history(args.name)
    if args.json:
        print(json.dumps({**entry.to_json(), "card": entry.card,
                          "decisions": [d.to_json() for d in history]}, allow_nan=False))
        return Exit.OK
    for key, value in entry.to_json().items():
        if key != "metrics":
            print(f"{key:>15}: {value if value not in (None, '') else '-'}")
    print(f"{'validation AUC':>15}: {_auc(entry.metrics)}")
    print(f"{'intended use':>15}: {entry.card.get('intended_use', '-')}")
    print("\ndecisions:")
    print(format_table(("AT", "ACTION", "FROM", "TO", "BY", "REASON"), [
        (f"{d.at:%Y-%m-%d %H:%M:%S}", d.action, d.from_state or "-", d.to_state, d.actor,
         d.reason or "-") for d in history]))
    return Exit.OK


def _import(registry: Any, args: argparse.Namespace) -> int:
    from node.triage.registry import import_checkpoint

    entry = import_checkpoint(registry, args.path, actor=args.by or who(), name=args.name,
                              version=args.version, reason=args.reason, activate=args.activate)
    _audit(registry, "import", entry, args, f" as {entry.state.value}")
    print(f"registered {entry.name} {entry.version} ({entry.architecture}) as "
          f"{entry.state.value}: {entry.file_path}")
    return Exit.OK


def _promote(registry: Any, args: argparse.Namespace) -> int:
    entry = registry.promote(args.name, actor=args.by or who(), reason=args.reason)
    _audit(registry, "promote", entry, args)
    print(f"{entry.name} {entry.version} is the active model; workers take it up before "
          "their next job")
    return Exit.OK


def _rollback(registry: Any, args: argparse.Namespace) -> int:
    entry = registry.rollback(actor=args.by or who(), reason=args.reason)
    _audit(registry, "rollback", entry, args, ", now active")
    print(f"rolled back: {entry.name} {entry.version} is the active model")
    return Exit.OK


def _retire(registry: Any, args: argparse.Namespace) -> int:
    entry = registry.retire(args.name, actor=args.by or who(), reason=args.reason)
    _audit(registry, "retire", entry, args)
    print(f"{entry.name} is retired")
    return Exit.OK


def gate_candidate(registry: Any, name: str, *, dicom_dir: Path, labels: Path, metric: str,
                   min_sensitivity: float, margin: float, device: str,
                   actor: str) -> tuple[Any, str]:
    """Evaluate candidate `name` and the active model on the same held-out set, then promote
    the candidate or keep it with the reason (ml.gate); (the decision, the active's name)."""
    from ml.evaluate import evaluate_classifier
    from ml.gate import decide
    from ml.inference import Classifier
    from ml.rsna import index_images, read_labels
    from storage.registry import ModelStateError

    candidate, active = registry.get(name), registry.active()
    if active is None:
        raise ModelStateError("no model is active to compare with: promote one first")
    if candidate.state.value != "candidate":
        raise ModelStateError(f"{candidate.name} is {candidate.state.value}, not a candidate")
    records = index_images(dicom_dir, read_labels(labels))
    if not records:
        raise ValueError(f"no .dcm file under {dicom_dir} has labels in {labels}")
    measured = {}
    for entry in (candidate, active):
        classifier = Classifier.load(entry.file_path, device=device)
        measured[entry.name] = evaluate_classifier(classifier, records).series
    decision = decide(measured[candidate.name], measured[active.name], metric=metric,
                      min_sensitivity_any=min_sensitivity, margin=margin)
    if decision.promote:
        registry.promote(candidate.name, actor=actor, reason=decision.reason)
    else:
        registry.note(candidate.name, action="gate", actor=actor, reason=decision.reason)
    verdict = "promoted" if decision.promote else "kept as a candidate"
    audit.record(registry.engine, "model_gate", detail=f"{candidate.name} "
                 f"{candidate.version} vs {active.name}: {verdict}: {decision.reason}")
    return decision, active.name


def _gate(registry: Any, args: argparse.Namespace) -> int:
    decision, active = gate_candidate(
        registry, args.name, dicom_dir=args.dicom_dir, labels=args.labels, metric=args.metric,
        min_sensitivity=args.min_sensitivity, margin=args.margin, device=args.device,
        actor=args.by or who())
    if args.json:
        print(json.dumps({"candidate": args.name, "active": active, **decision.to_dict()},
                         allow_nan=False))
    else:
        verdict = "promoted" if decision.promote else "kept as a candidate"
        print(f"{args.name} vs {active}: {verdict}: {decision.reason}")
    return Exit.OK if decision.promote else Exit.REFUSED


_MODELS = {"list": _list, "show": _show, "import": _import, "promote": _promote,
           "rollback": _rollback, "retire": _retire, "gate": _gate}


def register_trained(checkpoint: Path, name: str, settings: Settings) -> int:
    """`admin train --register NAME`: the run's best checkpoint, a candidate in the registry."""
    from node.triage.registry import import_checkpoint
    from storage.db import open_existing
    from storage.errors import DatabaseMissingError
    from storage.registry import ModelRegistry, RegistryError

    try:
        engine = open_existing(settings.database_url)
    except DatabaseMissingError as exc:
        print(f"ichtriage admin train --register: {exc}", file=sys.stderr)
        return Exit.NO_DATABASE
    try:
        registry = ModelRegistry(engine, settings.models_dir)
        entry = import_checkpoint(registry, checkpoint, name=name, actor=who(),
                                  reason="trained by admin train")
        audit.record(engine, "model_import",
                     detail=f"{entry.name} {entry.version} as a candidate, by admin train")
    except RegistryError as exc:
        print(f"ichtriage admin train --register: refused: {exc}", file=sys.stderr)
        return Exit.REFUSED
    finally:
        engine.dispose()
    print(f"registered {entry.name} {entry.version} as a candidate")
    return Exit.OK


def run_requeue(args: argparse.Namespace, settings: Settings) -> int:
    from node.scheduler import TRIAGE, series_lock
    from storage.db import open_existing
    from storage.errors import DatabaseMissingError, InvalidUIDError
    from storage.jobs import JobQueue
    from storage.requeue import Selection, UnknownStudyError, requeue

    try:
        selection = Selection(failed=args.failed, study_uid=args.study, since=args.since)
    except (InvalidUIDError, ValueError) as exc:
        print(f"ichtriage admin requeue: {exc}", file=sys.stderr)
        return Exit.BAD_INPUT
    try:
        engine = open_existing(settings.database_url)
    except DatabaseMissingError as exc:
        print(f"ichtriage admin requeue: {exc}", file=sys.stderr)
        return Exit.NO_DATABASE
    reason = f"queued again by {args.by or who()}" + (f": {args.reason}" if args.reason else "")
    try:
        done = requeue(engine, JobQueue(engine), selection, kind=TRIAGE, lock=series_lock,
                       reason=reason, dry_run=args.dry_run)
        for d in done if not args.dry_run else ():
            if d.queued:
                audit.record(engine, "requeue", study_uid=d.study_uid,
                             detail=f"series {d.series_uid} was {d.was}, {reason}")
    except UnknownStudyError as exc:
        print(f"ichtriage admin requeue: {exc}", file=sys.stderr)
        return Exit.NOT_FOUND
    finally:
        engine.dispose()
    if args.json:
        print(json.dumps([{"series_uid": d.series_uid, "study_uid": d.study_uid, "was": d.was,
                           "queued": d.queued} for d in done]))
        return Exit.OK
    if done:
        print(format_table(("SERIES", "STUDY", "WAS", "QUEUED"), [
            (d.series_uid, d.study_uid, d.was,
             "dry run" if args.dry_run else ("yes" if d.queued else "no (changed meanwhile)"))
            for d in done]))
    queued = sum(d.queued for d in done)
    print(f"{len(done)} series chosen, {queued} queued again" +
          (" (dry run: nothing queued)" if args.dry_run else ""))
    return Exit.OK

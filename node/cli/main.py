"""`ichtriage`: the operator's command line."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from node.config import ConfigError, Settings, load_settings

DEFAULTS = Settings()


def _setting_flags(parser: argparse.ArgumentParser) -> None:
    """Flags that override settings; each is also ICHTRIAGE_<NAME> or a key in --config."""
    add = parser.add_argument
    add("--config", type=Path, help="TOML settings file (env: ICHTRIAGE_CONFIG)")
    add("--data-dir", type=Path, help=f"where files and the SQLite database live (default: ./{DEFAULTS.data_dir})")
    add("--db-url", help="SQLAlchemy database URL (default: SQLite file in the data directory)")
    add("--log-level", help=f"(default: {DEFAULTS.log_level})")


def _model_flags(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add("--model", help="checkpoint imported into the model registry and made active at start "
        "when not registered yet; a registered one changes nothing: the registry decides "
        "(`ichtriage admin models`). Default: the registry's active model, the shipped demo "
        "model on first start")
    add("--device", help=f"torch device: auto, cpu, cuda, cuda:1 (default: {DEFAULTS.device})")


def _serve_flags(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add("--ae-title", help=f"the node's AE title (default: {DEFAULTS.ae_title})")
    add("--bind", help=f"address to listen on (default: {DEFAULTS.bind})")
    add("--port", type=int, help=f"DICOM port (default: {DEFAULTS.port})")
    add("--http-port", type=int, help=f"HTTP port, 0 for none (default: {DEFAULTS.http_port})")
    add("--http-bind", help=f"address the HTTP API and page listen on (default: "
        f"{DEFAULTS.http_bind})")
    add("--metrics", choices=("on", "off"), help="serve /metrics without a token (default: on)")
    add("--settle-seconds", type=float,
        help=f"quiet time after which a series is complete (default: {DEFAULTS.settle_seconds})")
    add("--allow-ae", action="append", metavar="AE[@HOST]",
        help="calling AE title allowed to connect, repeatable (default: any)")
    add("--allow-store-ae", action="append", metavar="AE[@HOST]",
        help="of the allowed AEs, one that may store (C-STORE), repeatable (default: all)")
    add("--allow-query-ae", action="append", metavar="AE[@HOST]",
        help="of the allowed AEs, one that may query and retrieve (C-FIND, C-MOVE, C-GET), "
        "repeatable (default: all)")
    add("--move-destination", action="append", metavar="AE@HOST:PORT",
        help="a C-MOVE destination, repeatable (default: none; others are refused, 0xA801)")
    add("--destination", action="append", metavar="AE@HOST:PORT", dest="destinations",
        help="where results are sent by C-STORE, repeatable")
    add("--receivers", type=int,
        help="receiving processes (default: one per CPU core)")
    add("--tls-cert", type=Path, help="PEM certificate: serve DICOM over TLS")
    add("--tls-key", type=Path, help="PEM private key of --tls-cert")
    add("--tls-ca", type=Path, help="PEM CA: require client certificates it signed")
    add("--min-slices", type=int,
        help=f"fewest slices of a series to triage (default: {DEFAULTS.min_slices})")
    add("--workers", type=int,
        help=f"triage workers in this process, 0 for none (default: {DEFAULTS.workers})")
    add("--key-images", action="store_const", const=True,
        help="with each SR, send the key slice of each finding with its heat map as a "
             "Secondary Capture marked 'AI result, not for diagnosis' (default: off)")
    add("--default-character-set", metavar="TERM", help="Specific Character Set assumed for "
        "data sets that declare none, e.g. 'ISO_IR 100' or 'GB18030' (default: none, the "
        "standard's ISO-IR 6)")
    _limit_flags(parser)


def _limit_flags(parser: argparse.ArgumentParser) -> None:
    """What a peer may make the node hold or wait for (node.dicom.guard)."""
    add = parser.add_argument
    add("--max-pdu", type=int, help="largest P-DATA-TF accepted, bytes; 0 for unlimited "
        f"(default: {DEFAULTS.max_pdu})")
    add("--max-message-mb", type=int, help="largest data set of one message held in memory "
        f"(default: {DEFAULTS.max_message_mb})")
    add("--max-associations", type=int, help="open associations, node-wide "
        f"(default: {DEFAULTS.max_associations})")
    add("--max-associations-per-host", type=int, help="open associations from one host "
        f"(default: {DEFAULTS.max_associations_per_host})")
    add("--association-request-timeout", type=float, help="seconds from connection to a "
        f"complete association request (default: {DEFAULTS.association_request_timeout})")
    add("--network-timeout", type=float, help="seconds an association may sit idle, or a PDU "
        f"take to arrive (default: {DEFAULTS.network_timeout})")
    add("--receive-path", choices=("fast", "stock"), help="fast: the node's pynetdicom "
        f"subclasses; stock: pynetdicom's own classes (default: {DEFAULTS.receive_path})")


SETTING_ARGS = ("data_dir", "db_url", "log_level", "ae_title", "bind", "port", "http_port",
                "http_bind", "metrics", "key_images",
                "settle_seconds", "allow_ae", "allow_store_ae", "allow_query_ae",
                "move_destination", "destinations", "receivers", "tls_cert", "tls_key",
                "tls_ca", "min_slices", "workers", "model", "device", "max_pdu",
                "max_message_mb", "max_associations", "max_associations_per_host",
                "association_request_timeout", "network_timeout", "receive_path",
                "default_character_set")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ichtriage",
        description="A DICOM node that triages head CT for intracranial hemorrhage.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the node: DICOM receiver, scheduler, worker")
    _setting_flags(serve)
    _serve_flags(serve)
    _model_flags(serve)

    worker = sub.add_parser("worker", help="run triage workers only (sharing the node's database)")
    _setting_flags(worker)
    _model_flags(worker)
    worker.add_argument("--workers", type=int, default=1, help="worker threads")

    worklist = sub.add_parser("worklist", help="the studies, likely bleeds first")
    _setting_flags(worklist)
    worklist.add_argument("--json", action="store_true", help="one JSON array of studies")
    worklist.add_argument("--limit", type=_positive, default=200,
                          help="most recent studies shown (default: %(default)s)")

    from node.cli.admin import add_admin_parser

    add_admin_parser(sub)

    db = sub.add_parser("db", help="database maintenance")
    db_sub = db.add_subparsers(dest="db_command", required=True)
    upgrade = db_sub.add_parser("upgrade", help="create or migrate the database to the newest schema")
    _setting_flags(upgrade)
    return parser


def settings_from(args: argparse.Namespace) -> Settings:
    overrides: dict[str, Any] = {k: getattr(args, k) for k in SETTING_ARGS if hasattr(args, k)}
    if overrides.get("metrics") is not None:
        overrides["metrics"] = overrides["metrics"] == "on"
    return load_settings(config_file=getattr(args, "config", None), overrides=overrides)


def main(argv: Sequence[str] | None = None) -> int:
    try:
        code = _run(argv)
        sys.stdout.flush()  # here, where a closed pipe can still be caught
        return code
    except BrokenPipeError:
        # The reader went away (`ichtriage worklist --json | head`): nothing is wrong with the
        # node. Point stdout at /dev/null so that the interpreter's last flush stays quiet.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number >= 1")
    return value


def _run(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        settings = settings_from(args)
    except ConfigError as exc:  # a setting's value: 1, like every other mistake at start
        print(f"ichtriage: {exc}", file=sys.stderr)
        return 1
    if args.command == "serve":
        from node.serve import serve

        return serve(settings)
    if args.command == "worklist":
        from node.cli.worklist import print_worklist
        from storage.errors import DatabaseMissingError

        try:
            return print_worklist(settings, as_json=args.json, limit=args.limit)
        except DatabaseMissingError as exc:
            print(f"ichtriage: {exc}", file=sys.stderr)
            return 1
    if args.command == "admin":
        from node.cli.admin import run_admin

        return run_admin(args, settings)
    if args.command == "worker":
        from node.serve import work

        return work(settings, args.workers)
    if args.command == "db" and args.db_command == "upgrade":
        from node.logs import configure_logging
        from storage.db import upgrade

        configure_logging(settings.log_level)
        upgrade(settings.database_url)
        print(f"database is at the newest schema: {_redact(settings.database_url)}")
        return 0
    parser.error(f"unknown command {args.command}")
    return 2


def _version() -> str:
    """This node's version and those of the libraries its results depend on."""
    from importlib.metadata import PackageNotFoundError, version

    def of(name: str) -> str:
        try:
            return version(name)
        except PackageNotFoundError:
            return "not installed"

    libraries = ", ".join(f"{name} {of(name)}" for name in
                          ("pynetdicom", "pydicom", "highdicom", "torch", "SQLAlchemy"))
    return f"ichtriage {of('ichtriage')} ({libraries})"


def _redact(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)

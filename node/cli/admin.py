"""`ichtriage admin`: data, training, evaluation and model management."""

from __future__ import annotations

import argparse
from typing import Any

from node.config import Settings


def add_admin_parser(sub: Any) -> None:
    admin = sub.add_parser("admin", help="phantoms, training, evaluation, models")
    admin.add_subparsers(dest="admin_command", required=True)


def run_admin(args: argparse.Namespace, settings: Settings) -> int:
    raise SystemExit(f"ichtriage admin {args.admin_command}: not available")

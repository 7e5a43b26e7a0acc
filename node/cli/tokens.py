"""`ichtriage admin tokens create|list|revoke`: the HTTP API's tokens (storage.tokens)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

from node.config import Settings
from storage.audit import AuditLog
from storage.db import open_existing
from storage.errors import DatabaseMissingError
from storage.tokens import Role, TokenStore


def add_tokens_parser(commands: Any, setting_flags: Callable[[argparse.ArgumentParser], None]
                      ) -> None:
    tokens = commands.add_parser("tokens", help="API tokens of the HTTP side")
    sub = tokens.add_subparsers(dest="tokens_command", required=True)
    create = sub.add_parser("create", help="make a token; it is printed once, keep it")
    create.add_argument("--role", required=True, choices=[r.value for r in Role],
                        help="reader: read; radiologist: also feedback; admin: everything")
    create.add_argument("--name", required=True, help="who or what holds it (shown in audit)")
    listing = sub.add_parser("list", help="the tokens, without their secrets")
    revoke = sub.add_parser("revoke", help="stop a token from working, at once")
    revoke.add_argument("id", type=int, help="the token's id (see list)")
    for parser in (create, listing, revoke):
        setting_flags(parser)


def run_tokens(args: argparse.Namespace, settings: Settings) -> int:
    try:
        engine = open_existing(settings.database_url)
    except DatabaseMissingError as exc:
        print(f"ichtriage admin tokens: {exc}", file=sys.stderr)
        return 1
    try:
        store, audit = TokenStore(engine), AuditLog(engine)
        if args.tokens_command == "create":
            info, token = store.create(name=args.name, role=args.role)
            audit.record("token_create", actor="cli", token_pk=info.pk,
                         detail=f"{info.name} ({info.role})")
            print(f"token {info.pk} for {info.name} ({info.role}); shown once, keep it:")
            print(token)
            return 0
        if args.tokens_command == "list":
            print(f"{'id':>4}  {'role':12}  {'state':8}  {'created (UTC)':17}  name")
            for t in store.list():
                print(f"{t.pk:>4}  {t.role:12}  {'active' if t.active else 'revoked':8}  "
                      f"{t.created_at:%Y-%m-%d %H:%M}  {t.name}")
            return 0
        if not store.revoke(args.id):
            print(f"ichtriage admin tokens: no active token {args.id}", file=sys.stderr)
            return 1
        audit.record("token_revoke", actor="cli", token_pk=args.id)
        print(f"token {args.id} revoked")
        return 0
    finally:
        engine.dispose()

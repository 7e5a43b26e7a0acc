"""`ichtriage admin tokens create|list|revoke`: the HTTP API's tokens (storage.tokens).

Exit codes: 0 done; 1 no database, or no active token of that id; 2 bad input (a name that is
empty or longer than 64 characters). Creating and revoking are audited (node.cli.audit)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from datetime import datetime
from typing import Any

from node.cli import audit
from node.config import Settings
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
    listing.add_argument("--json", action="store_true", help="one JSON array")
    revoke = sub.add_parser("revoke", help="stop a token from working, at once")
    revoke.add_argument("id", type=int, help="the token's id (see list)")
    for parser in (create, listing, revoke):
        setting_flags(parser)


def _iso(at: datetime | None) -> str | None:
    return None if at is None else at.isoformat()


def run_tokens(args: argparse.Namespace, settings: Settings) -> int:
    try:
        engine = open_existing(settings.database_url)
    except DatabaseMissingError as exc:
        print(f"ichtriage admin tokens: {exc}", file=sys.stderr)
        return 1
    try:
        store = TokenStore(engine)
        if args.tokens_command == "create":
            try:
                info, token = store.create(name=args.name, role=args.role)
            except ValueError as exc:
                print(f"ichtriage admin tokens create: --{exc}", file=sys.stderr)
                return 2
            audit.record(engine, "token_create", token_pk=info.pk,
                         detail=f"{info.name} ({info.role})")
            print(f"token {info.pk} for {info.name} ({info.role}); shown once, keep it:")
            print(token)
            return 0
        if args.tokens_command == "list":
            if args.json:
                print(json.dumps([{"id": t.pk, "name": t.name, "role": str(t.role),
                                   "active": t.active, "created_at": t.created_at.isoformat(),
                                   "revoked_at": _iso(t.revoked_at),
                                   "last_used_at": _iso(t.last_used_at)}
                                  for t in store.list()]))
                return 0
            print(f"{'id':>4}  {'role':12}  {'state':8}  {'created (UTC)':17}  name")
            for t in store.list():
                print(f"{t.pk:>4}  {t.role:12}  {'active' if t.active else 'revoked':8}  "
                      f"{t.created_at:%Y-%m-%d %H:%M}  {t.name}")
            return 0
        if not store.revoke(args.id):
            print(f"ichtriage admin tokens: no active token {args.id}", file=sys.stderr)
            return 1
        audit.record(engine, "token_revoke", token_pk=args.id)
        print(f"token {args.id} revoked")
        return 0
    finally:
        engine.dispose()

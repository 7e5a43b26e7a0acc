"""API tokens: made with a random secret shown once, kept as a salted scrypt hash.

A token reads `icht_<id>_<secret>`: the id finds the row without a scan, the secret is
checked against `hashlib.scrypt(secret, salt)` in constant time.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, delete, insert, select, update

from storage.db import reader
from storage.models import ApiToken, WebSession, utcnow

PREFIX = "icht"
_TOKEN = re.compile(rf"{PREFIX}_(?P<id>[1-9][0-9]{{0,9}})_(?P<secret>[A-Za-z0-9_-]{{43}})")
# scrypt costs (RFC 7914): 16 MiB and some 30 ms a check; tokens are checked once per
# session or per cached bearer, not once per request.
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1


class Role(enum.StrEnum):
    """What a token may do; each role may do what the ones before it may."""

    READER = "reader"  # worklist, studies, images
    RADIOLOGIST = "radiologist"  # ... and feedback
    ADMIN = "admin"  # ... and the admin views

    def allows(self, needed: Role) -> bool:
        order = list(Role)
        return order.index(self) >= order.index(needed)


@dataclass(frozen=True)
class TokenInfo:
    pk: int
    name: str
    role: Role
    created_at: datetime
    revoked_at: datetime | None
    last_used_at: datetime | None

    @property
    def active(self) -> bool:
        return self.revoked_at is None


def _hash(secret: str, salt: bytes) -> str:
    return hashlib.scrypt(secret.encode(), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P,
                          dklen=32).hex()


def parse(token: str) -> tuple[int, str] | None:
    """(id, secret) of a well-formed token, else None."""
    match = _TOKEN.fullmatch(token.strip())
    return (int(match["id"]), match["secret"]) if match else None


class TokenStore:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def create(self, *, name: str, role: Role | str) -> tuple[TokenInfo, str]:
        """A new token: its row and the token text, which is not kept anywhere."""
        role = Role(role)
        name = name.strip()
        if not name or len(name) > 64:
            raise ValueError(f"name: 1-64 characters, got {name!r}")
        secret = secrets.token_urlsafe(32)
        salt = secrets.token_bytes(16)
        with self.engine.begin() as conn:
            pk = conn.execute(insert(ApiToken).values(
                name=name, role=str(role), salt=salt.hex(), secret_hash=_hash(secret, salt),
                created_at=utcnow()).returning(ApiToken.id)).scalar_one()
        info = self.get(int(pk))
        assert info is not None
        return info, f"{PREFIX}_{pk}_{secret}"

    def get(self, pk: int) -> TokenInfo | None:
        with reader(self.engine).connect() as conn:
            row = conn.execute(select(ApiToken.__table__).where(ApiToken.id == pk)).first()
        return _info(row) if row is not None else None

    def list(self) -> list[TokenInfo]:
        with reader(self.engine).connect() as conn:
            return [_info(r) for r in conn.execute(select(ApiToken.__table__).order_by(ApiToken.id))]

    def revoke(self, pk: int) -> bool:
        """Revoke token `pk` and end the page sessions opened with it; False when there is
        no such active token."""
        with self.engine.begin() as conn:
            done = conn.execute(update(ApiToken).where(ApiToken.id == pk,
                                                       ApiToken.revoked_at.is_(None))
                                .values(revoked_at=utcnow())).rowcount
            conn.execute(delete(WebSession).where(WebSession.token_pk == pk))
        return done == 1

    def verify(self, token: str) -> TokenInfo | None:
        """The active token `token` is, or None (malformed, unknown, wrong or revoked)."""
        parsed = parse(token)
        if parsed is None:
            return None
        pk, secret = parsed
        with reader(self.engine).connect() as conn:
            row = conn.execute(select(ApiToken.__table__).where(ApiToken.id == pk)).first()
        if row is None or row.revoked_at is not None:
            return None
        if not hmac.compare_digest(_hash(secret, bytes.fromhex(row.salt)), row.secret_hash):
            return None
        return _info(row)

    def touch(self, pk: int) -> None:
        """Note that token `pk` was used (at log-in, not each request)."""
        with self.engine.begin() as conn:
            conn.execute(update(ApiToken).where(ApiToken.id == pk)
                         .values(last_used_at=utcnow()))


def _info(row: Any) -> TokenInfo:
    return TokenInfo(row.id, row.name, Role(row.role), row.created_at, row.revoked_at,
                     row.last_used_at)

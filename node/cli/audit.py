"""Who the admin commands are, in the audit trail (storage.audit).

Every admin command that changes the node's state records one `audit_event` row per thing it
touched (a study, a model, a token, an export), with actor `cli:<OS user>`: the operating
system's user running the command, prefixed so that it never reads as an HTTP token's name.
A `--by NAME` given to a models or requeue command is kept in the row's detail and in the
registry's decision, not as the actor. Never a patient's name or ID: studies by UID.
"""

from __future__ import annotations

import getpass

from sqlalchemy import Engine

from storage.audit import AuditLog

PREFIX = "cli:"


def who() -> str:
    """The OS user running the command ('unknown' where the uid has no name: a container)."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def actor() -> str:
    """The audit actor of a command-line action: `cli:<OS user>`."""
    return PREFIX + who()


def record(engine: Engine, action: str, *, study_uid: str = "", detail: str = "",
           token_pk: int | None = None) -> None:
    """One audit_event row for an admin action, actor `cli:<OS user>`."""
    AuditLog(engine).record(action, actor=actor(), study_uid=study_uid, detail=detail,
                            token_pk=token_pk)

"""Validation of DICOM UIDs before they are used as keys or path components (PS3.5 9.1)."""

import re

from storage.errors import InvalidUIDError

# PS3.5 9.1: components of digits separated by dots, no leading zero in a multi-digit
# component, at most 64 characters in all.
_UID = re.compile(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*")


def validate_uid(value: object, *, what: str = "UID") -> str:
    """Return `value` as a valid UID string, or raise InvalidUIDError naming `what`."""
    if not isinstance(value, str):
        raise InvalidUIDError(f"{what} must be a string, got {type(value).__name__}")
    uid = value.rstrip("\0 ")
    if not uid:
        raise InvalidUIDError(f"{what} is empty")
    if len(uid) > 64:
        raise InvalidUIDError(f"{what} is longer than 64 characters ({len(uid)})")
    if not _UID.fullmatch(uid):
        raise InvalidUIDError(f"{what} {uid[:64]!r} is not digits and dots (PS3.5 9.1)")
    return uid

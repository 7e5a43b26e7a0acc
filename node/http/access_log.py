"""uvicorn's access log without query values: a DICOMweb search names its matching keys
and values in the query (`?PatientName=...`, PS3.18 8.3.4), and a patient's name or ID must
never reach a log. A logging.Filter on the "uvicorn.access" logger rewrites each record's
path to its path and query keys, every value replaced by "-"."""

from __future__ import annotations

import logging
import re
from urllib.parse import parse_qsl

ACCESS_LOGGER = "uvicorn.access"
_KEY = re.compile(r"[A-Za-z0-9_.\-]{1,64}")
PATH_ARG = 2  # uvicorn's access record args: client, method, path?query, HTTP version, status


def redact(path_with_query: str) -> str:
    """'/dicom-web/studies?PatientName=X%5EY&limit=5' -> '/dicom-web/studies?PatientName=-&
    limit=-'; a key that is not a plain name (it could carry data too) becomes '?'."""
    path, sep, query = path_with_query.partition("?")
    if not sep:
        return path
    keys = [k if _KEY.fullmatch(k) else "?"
            for k, _ in parse_qsl(query, keep_blank_values=True)]
    return f"{path}?{'&'.join(f'{k}=-' for k in keys)}" if keys else path


class RedactQueryValues(logging.Filter):
    """Keeps every record; an access record's path loses its query values."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) > PATH_ARG:
            path = args[PATH_ARG]
            if isinstance(path, str):
                record.args = (*args[:PATH_ARG], redact(path), *args[PATH_ARG + 1:])
        return True


def install() -> None:
    """Put the filter on uvicorn's access logger, once however many servers start."""
    access = logging.getLogger(ACCESS_LOGGER)
    if not any(isinstance(f, RedactQueryValues) for f in access.filters):
        access.addFilter(RedactQueryValues())

"""422 answers that do not echo what was sent in full: FastAPI's own handler returns each
error's `input` as given, so a 100 KB query value came back (and went to any log of the
answer) whole. Here a long input is cut to ECHO_CHARS characters and its length named, and
at most MAX_ERRORS errors are listed."""

from __future__ import annotations

import json
from typing import Any

from fastapi import Request, status
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response

ECHO_CHARS = 64
MAX_ERRORS = 10  # a body of many bad fields is answered with the first ten and a count


def shorten(value: Any) -> Any:
    """`value` when short; else its first ECHO_CHARS characters (a string) or a note of its
    size (a list or object), so an answer never carries more than a few hundred bytes."""
    if isinstance(value, str):
        if len(value) <= ECHO_CHARS:
            return value
        return f"{value[:ECHO_CHARS]}... ({len(value)} characters)"
    encoded = json.dumps(jsonable_encoder(value))
    if len(encoded) <= 4 * ECHO_CHARS:
        return value
    return f"({type(value).__name__} of {len(encoded)} characters)"


def validation_refused(_request: Request, exc: Exception) -> Response:
    """The exception handler for RequestValidationError: FastAPI's 422 body, inputs cut."""
    assert isinstance(exc, RequestValidationError)
    found = exc.errors()
    errors: list[Any] = [{**e, "input": shorten(e["input"])} if "input" in e else e
                         for e in found[:MAX_ERRORS]]
    if len(found) > MAX_ERRORS:
        errors.append({"type": "more", "loc": [],
                       "msg": f"{len(found) - MAX_ERRORS} more errors not shown"})
    return JSONResponse({"detail": jsonable_encoder(errors)},
                        status_code=status.HTTP_422_UNPROCESSABLE_CONTENT)

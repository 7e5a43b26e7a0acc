"""The database down: every route answers 503 with a short body and logs one line (no
traceback), and the next request after the database is back is served as usual (the
engine's pool reconnects: pool_pre_ping on PostgreSQL, a fresh file open on SQLite)."""

from __future__ import annotations

import logging

from fastapi import Request, status
from fastapi.responses import JSONResponse, Response
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

logger = logging.getLogger(__name__)

DOWN = "the database does not answer"
RETRY_AFTER_SECONDS = 5


def is_lost_connection(exc: BaseException) -> bool:
    """Whether `exc` says the database cannot be reached (a refused or cut connection, an
    unopenable SQLite file, a pool with no connection to give), not a fault of the SQL."""
    if isinstance(exc, PoolTimeout):
        return True
    return isinstance(exc, DBAPIError) and (isinstance(exc, OperationalError)
                                            or exc.connection_invalidated)


def database_down(request: Request, exc: Exception) -> Response:
    """An exception handler (FastAPI `exception_handler`) for DBAPIError and the pool's
    TimeoutError: 503 and one log line when the database is unreachable; anything else is
    raised on, to the server's 500 and its traceback."""
    if not is_lost_connection(exc):
        raise exc
    cause = type(getattr(exc, "orig", None) or exc).__name__
    logger.warning("%s %s: 503, %s (%s)", request.method, request.url.path, DOWN, cause)
    return JSONResponse({"detail": DOWN}, status_code=status.HTTP_503_SERVICE_UNAVAILABLE,
                        headers={"Retry-After": str(RETRY_AFTER_SECONDS)})

"""/healthz and /metrics: open without a token (documented in the OpenAPI schema)."""

from __future__ import annotations

import logging
import shutil

from fastapi import APIRouter, HTTPException, Response, status
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError

from node.http.deps import Context
from node.http.schemas import Health
from storage.counts import count
from storage.db import reader

logger = logging.getLogger(__name__)
router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health,
            responses={503: {"model": Health, "description": "a check failed"}})
def healthz(ctx: Context, response: Response) -> Health:
    """Open: the database answers, the file store has room, the queue depth."""
    database, depth, failed = True, None, None
    try:
        with reader(ctx.engine).connect() as conn:
            conn.execute(select(1))
        c = count(ctx.engine, ())
        depth, failed = c.queue_depth, c.jobs.get("failed", 0)
    except SQLAlchemyError as exc:
        logger.warning("health check: the database does not answer: %s", exc.__class__.__name__)
        database = False
    try:
        free: int | None = shutil.disk_usage(ctx.files.root).free
    except OSError:
        free = None
    room = free is not None and free >= ctx.files.min_free_bytes
    ok = database and room
    if not ok:
        response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    return Health(status="ok" if ok else "degraded", database=database, free_bytes=free,
                  free_space_ok=room, queue_depth=depth, failed_jobs=failed)


@router.get("/metrics", response_class=Response,
            responses={200: {"content": {"text/plain": {}}}})
def metrics(ctx: Context) -> Response:
    """Open unless the `metrics` setting is off: Prometheus text format, names ichtriage_*."""
    if not ctx.metrics or ctx.registry is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "metrics are off")
    return Response(generate_latest(ctx.registry), media_type=CONTENT_TYPE_LATEST)

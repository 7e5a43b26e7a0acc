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
from storage.counts import Counts, job_counts
from storage.db import reader
from storage.worker_beats import STALE_SECONDS, WorkerBeats

logger = logging.getLogger(__name__)
router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health,
            responses={503: {"model": Health, "description": "a check failed"}})
def healthz(ctx: Context, response: Response) -> Health:
    """Open: the database answers, the file store has room, a triage worker is alive (its
    heartbeat, or a job lease it renews; storage.worker_beats), the queue depth. 503 with
    the problems in words when a check fails."""
    problems: list[str] = []
    database, depth, failed, alive = True, None, None, None
    try:
        with reader(ctx.engine).connect() as conn:
            conn.execute(select(1))
        jobs = Counts(jobs=job_counts(ctx.engine))
        depth, failed = jobs.queue_depth, jobs.jobs.get("failed", 0)
        alive = WorkerBeats(ctx.engine).liveness()
    except SQLAlchemyError as exc:
        logger.warning("health check: the database does not answer: %s", exc.__class__.__name__)
        database = False
        problems.append("the database does not answer")
    try:
        free: int | None = shutil.disk_usage(ctx.files.root).free
    except OSError:
        free = None
    room = free is not None and free >= ctx.files.min_free_bytes
    if not room:
        problems.append("the file store has less free space than min_free_mb"
                        if free is not None else "the file store cannot be read")
    if alive is not None and not alive.alive:
        problems.append("no triage worker alive: none beat in the last "
                        f"{STALE_SECONDS:.0f} s and none holds a job")
    if problems:
        response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    return Health(status="degraded" if problems else "ok", problems=problems,
                  database=database, free_bytes=free, free_space_ok=room,
                  worker_alive=alive.alive if alive else None,
                  workers_beating=alive.beating if alive else None,
                  last_worker_beat_at=alive.last_beat_at if alive else None,
                  queue_depth=depth, failed_jobs=failed)


@router.get("/metrics", response_class=Response,
            responses={200: {"content": {"text/plain": {}}}})
def metrics(ctx: Context) -> Response:
    """Open unless the `metrics` setting is off: Prometheus text format, names ichtriage_*."""
    if not ctx.metrics or ctx.registry is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "metrics are off")
    return Response(generate_latest(ctx.registry), media_type=CONTENT_TYPE_LATEST)

"""The FastAPI application: routers per resource, the page's static files, security
headers and the request size limit. Built by `create_app(ctx)`; nothing at import time."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

from fastapi import FastAPI, Request, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from node.http import (
    auth,
    dicomweb,
    feedback,
    health,
    images,
    pages,
    queue,
    studies,
    worklist,
)
from node.http.context import MAX_BODY_BYTES, WebContext
from node.http.deps import NotLoggedIn
from node.http.outage import database_down
from node.http.validation import validation_refused

# No inline script or style anywhere: the pages load /static/*.js and *.css only.
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
       "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
DESCRIPTION = """\
The ICH triage node's worklist, studies, slice images and feedback.

Every route needs an API token (`Authorization: Bearer icht_...`, made with
`ichtriage admin tokens create`) or the page's session cookie, except `/healthz`,
`/metrics` (off with the `metrics` setting) and `/openapi.json`. Roles: `reader` reads,
`radiologist` also gives feedback, `admin` may do everything. 401: no valid token;
403: the role does not allow it, or a cross-site write.

JSON names: a DICOM attribute of the object is named by its DICOM keyword
(`StudyInstanceUID`, `AccessionNumber`), the node's own fields are snake_case. Patient
names and IDs are not served.
"""


def create_app(ctx: WebContext) -> FastAPI:
    app = FastAPI(title="ichtriage", description=DESCRIPTION, version="1",
                  docs_url=None, redoc_url=None, openapi_url="/openapi.json")
    app.state.ctx = ctx
    for module in (health, worklist, studies, images, feedback, dicomweb, queue, auth, pages):
        app.include_router(module.router)
    app.mount("/static", StaticFiles(directory=Path(__file__).with_name("static")),
              name="static")

    @app.get("/favicon.ico", include_in_schema=False)
    def favicon() -> Response:
        return Response(status_code=status.HTTP_204_NO_CONTENT)

    app.add_exception_handler(RequestValidationError, validation_refused)
    for lost in (DBAPIError, PoolTimeout):
        app.add_exception_handler(lost, database_down)

    @app.exception_handler(NotLoggedIn)
    def to_login(_request: Request, _exc: NotLoggedIn) -> Response:
        return RedirectResponse("/login", status_code=status.HTTP_303_SEE_OTHER)

    @app.middleware("http")
    async def guard(request: Request,
                    call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        refusal = _refuse_body(request)
        response = refusal or await call_next(request)
        headers = response.headers
        headers["Content-Security-Policy"] = CSP
        headers["X-Content-Type-Options"] = "nosniff"
        headers["X-Frame-Options"] = "DENY"
        headers["Referrer-Policy"] = "same-origin"
        headers.setdefault("Cache-Control", "no-store")
        return response

    return app


def _refuse_body(request: Request) -> Response | None:
    """411/413 before a body is read: writes must say their length, and keep it small."""
    if request.method in ("GET", "HEAD", "OPTIONS"):
        return None
    length = request.headers.get("content-length")
    if length is None or not length.isdigit():
        if request.headers.get("transfer-encoding"):
            return JSONResponse({"detail": "a body needs Content-Length"},
                                status_code=status.HTTP_411_LENGTH_REQUIRED)
        return None
    if int(length) > MAX_BODY_BYTES:
        return JSONResponse({"detail": f"request body over {MAX_BODY_BYTES} bytes"},
                            status_code=status.HTTP_413_CONTENT_TOO_LARGE)
    return None

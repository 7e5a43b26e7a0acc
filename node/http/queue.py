"""The admin's queue: jobs and deliveries not done, series still receiving; retry a failed
series or delivery, complete a receiving series now. JSON under /api/queue, the page at
/queue; every write is audited and, from the page, CSRF-checked."""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated, Any

from fastapi import APIRouter, Form, HTTPException, Path, Request, status
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from pydantic import BaseModel, Field

from node.http.bounds import INT32_MAX, row_id
from node.http.context import WebContext
from node.http.deps import Admin, Context, PageAdmin, Principal, check_csrf, client_of
from node.http.pages import render
from node.http.schemas import UtcTime
from node.http.studies import UID

router = APIRouter(tags=["queue"])
SeriesUID = Annotated[str, Path(pattern=UID, max_length=64, description="SeriesInstanceUID")]


class JobOut(BaseModel):
    id: int
    status: str = Field(description="queued, running or failed")
    attempts: int
    series_uid: str
    study_uid: str
    worker: str = Field(description="the worker holding it; empty when none")
    last_error: str
    created_at: UtcTime
    started_at: UtcTime | None


class DeliveryOut(BaseModel):
    id: int
    sop_uid: str = Field(description="the SR's SOPInstanceUID")
    destination: str = Field(description="AE@host:port")
    status: str = Field(description="pending or failed")
    attempts: int
    next_attempt_at: UtcTime
    last_error: str


class ReceivingOut(BaseModel):
    series_uid: str
    study_uid: str
    instances: int
    last_received_at: UtcTime


class QueueOut(BaseModel):
    jobs: list[JobOut] = Field(description="queued, running and failed jobs, at most 200")
    deliveries: list[DeliveryOut] = Field(description="pending and failed deliveries")
    receiving: list[ReceivingOut] = Field(description="series still receiving")


class Outcome(BaseModel):
    outcome: str = Field(description="what happened, in words")


def _snapshot(ctx: WebContext) -> dict[str, Any]:
    return {"jobs": [asdict(j) for j in ctx.queue.jobs()],
            "deliveries": [asdict(d) for d in ctx.queue.deliveries()],
            "receiving": [asdict(r) for r in ctx.queue.receiving()]}


def _act(ctx: WebContext, who: Principal, request: Request, action: str, target: str) -> str:
    """Do `action` on `target`; what happened, in words; 404 when there is no such series
    or delivery, 409 when it is not in the state the action applies to."""
    if action == "retry_series":
        done = ctx.queue.retry_series(target)
        outcome = "back to the scheduler" if done else ""
    elif action == "complete_series":
        if ctx.monitor is None:
            raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "no scheduler here")
        outcome = ctx.monitor.complete_now(target) or ""
    else:
        outcome = "pending again" if ctx.queue.retry_delivery(int(target)) else ""
    if not outcome:
        if action == "retry_delivery":
            known, what = ctx.queue.has_delivery(int(target)), "delivery"
        else:
            known, what = ctx.queue.has_series(target), "series"
        if not known:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"no such {what}")
        raise HTTPException(status.HTTP_409_CONFLICT, "nothing to do: it is not in that state")
    ctx.audit.record(action, actor=who.actor, token_pk=who.token.pk,
                     detail=f"{target}: {outcome}"[:200], client=client_of(request))
    return outcome


@router.get("/api/queue", response_model=QueueOut)
def get_queue(ctx: Context, who: Admin) -> QueueOut:
    """Queued, running and failed jobs; pending and failed deliveries; receiving series."""
    return QueueOut.model_validate(_snapshot(ctx))


REFUSALS: dict[int | str, dict[str, Any]] = {
    404: {"description": "no such series or delivery"},
    409: {"description": "it is not in the state the action applies to"}}


@router.post("/api/queue/series/{series_uid}/retry",
             response_model=Outcome, responses=REFUSALS)
def retry_series(request: Request, ctx: Context, who: Admin, series_uid: SeriesUID
                 ) -> Outcome:
    check_csrf(request, who, None)
    return Outcome(outcome=_act(ctx, who, request, "retry_series", series_uid))


@router.post("/api/queue/series/{series_uid}/complete",
             response_model=Outcome, responses=REFUSALS)
def complete_series(request: Request, ctx: Context, who: Admin, series_uid: SeriesUID
                    ) -> Outcome:
    check_csrf(request, who, None)
    return Outcome(outcome=_act(ctx, who, request, "complete_series", series_uid))


@router.post("/api/queue/deliveries/{delivery_id}/retry",
             response_model=Outcome, responses=REFUSALS)
def retry_delivery(request: Request, ctx: Context, who: Admin,
                   delivery_id: Annotated[int, Path(ge=1, le=INT32_MAX)]) -> Outcome:
    check_csrf(request, who, None)
    return Outcome(outcome=_act(ctx, who, request, "retry_delivery", str(delivery_id)))


# What a form action did, for the page: the redirect's ?notice= names one of these.
NOTICES = {"done": "Done.",
           "missing": "Nothing done: there is no such series or delivery (any more).",
           "conflict": "Nothing done: it is no longer in a state this action applies to "
                       "(another action or the node may have moved it on).",
           "unavailable": "Nothing done: this node runs no scheduler to complete series."}
REFUSED_NOTICE = {status.HTTP_404_NOT_FOUND: "missing", status.HTTP_409_CONFLICT: "conflict",
                  status.HTTP_503_SERVICE_UNAVAILABLE: "unavailable"}


@router.get("/queue", response_class=HTMLResponse, include_in_schema=False)
def queue_page(request: Request, ctx: Context, who: PageAdmin, notice: str = "") -> Response:
    return render(request, "queue.html", {"who": who, "csrf": who.session.csrf if who.session
                                          else "", "can_complete": ctx.monitor is not None,
                                          "notice": NOTICES.get(notice, ""),
                                          **_snapshot(ctx)})


@router.post("/queue", include_in_schema=False)
def queue_form(request: Request, ctx: Context, who: PageAdmin,
               csrf_token: Annotated[str, Form(max_length=100)],
               action: Annotated[str, Form(pattern="^(retry_series|complete_series|"
                                                   "retry_delivery)$")],
               target: Annotated[str, Form(pattern=r"^[0-9.]{1,64}$")]) -> Response:
    check_csrf(request, who, csrf_token)
    if action == "retry_delivery" and row_id(target) is None:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT,
                            f"a delivery id is a number 1-{INT32_MAX}")
    try:
        _act(ctx, who, request, action, target)
        notice = "done"
    except HTTPException as exc:  # shown on the page in words, not as the API's JSON
        if exc.status_code not in REFUSED_NOTICE:
            raise
        notice = REFUSED_NOTICE[exc.status_code]
    return RedirectResponse(f"/queue?notice={notice}", status_code=status.HTTP_303_SEE_OTHER)

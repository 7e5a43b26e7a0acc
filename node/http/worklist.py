"""GET /api/worklist: the studies, a page at a time (storage.worklist_pages)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, HTTPException, Query, Request, status
from pydantic import AfterValidator

from ml.labels import LABELS
from node.http.bounds import cursor_in_range
from node.http.deps import Context, Reader, client_of
from node.http.schemas import WorklistItem, WorklistPage
from storage.worklist_pages import PRIORITIES, STATUSES, CursorError, Filters, page

router = APIRouter(prefix="/api", tags=["worklist"])

DATE = r"^\d{8}$"


def _calendar_date(value: str | None) -> str | None:
    """A YYYYMMDD that is a day of the calendar (DA, PS3.5 6.2); ValueError (422) else."""
    if value is not None:
        try:
            datetime.strptime(value, "%Y%m%d")
        except ValueError:
            raise ValueError("not a date YYYYMMDD") from None
    return value


StudyDate = Annotated[str | None, Query(pattern=DATE, description="YYYYMMDD"),
                      AfterValidator(_calendar_date)]


@router.get("/worklist", response_model=WorklistPage)
def get_worklist(
    request: Request, ctx: Context, who: Reader,
    sort: Literal["priority", "arrival"] = "priority",
    status_: Annotated[Literal[STATUSES] | None, Query(alias="status")] = None,  # type: ignore[valid-type]
    priority: Literal[PRIORITIES] | None = None,  # type: ignore[valid-type]
    finding: Literal[LABELS] | None = None,  # type: ignore[valid-type]
    study_date_from: StudyDate = None,
    study_date_to: StudyDate = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: Annotated[str | None, Query(max_length=400)] = None,
) -> WorklistPage:
    """Priority order: positive calls first (most probable first), then negatives on an
    incomplete volume, then the rest oldest first. Arrival order: newest first."""
    if cursor is not None and not cursor_in_range(cursor):
        raise HTTPException(status.HTTP_400_BAD_REQUEST, "cursor is not one this API gave")
    try:
        filters = Filters(status=status_, priority=priority, finding=finding,
                          study_date_from=study_date_from, study_date_to=study_date_to)
        result = page(ctx.engine, sort=sort, filters=filters, limit=limit, cursor=cursor)
    except (CursorError, ValueError) as exc:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, str(exc)) from None
    ctx.audit.record("worklist_view", actor=who.actor, token_pk=who.token.pk,
                     detail=f"{len(result.entries)} rows, sort {sort}", client=client_of(request))
    return WorklistPage(items=[WorklistItem.of(e) for e in result.entries],
                        next_cursor=result.next_cursor)

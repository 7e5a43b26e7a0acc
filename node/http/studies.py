"""GET /api/studies/{StudyInstanceUID}: one study in detail."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, Request, status

from node.http.context import WebContext
from node.http.deps import Context, Reader, client_of
from node.http.schemas import StudyOut
from storage.worklist import entries_for

router = APIRouter(prefix="/api", tags=["studies"])

UID = r"^[0-9]+(\.[0-9]+)*$"
StudyUID = Annotated[str, Path(pattern=UID, max_length=64,
                               description="StudyInstanceUID")]


def study_out(ctx: WebContext, study_uid: str) -> StudyOut:
    detail = ctx.studies.detail(study_uid)
    if detail is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no such study")
    summary = entries_for(ctx.engine, [detail.pk]).get(study_uid)
    return StudyOut.of(detail, summary, ctx.feedback.for_study(study_uid))


@router.get("/studies/{study_uid}", response_model=StudyOut)
def get_study(request: Request, ctx: Context, who: Reader, study_uid: StudyUID) -> StudyOut:
    out = study_out(ctx, study_uid)
    ctx.audit.record("study_view", actor=who.actor, token_pk=who.token.pk, study_uid=study_uid,
                     client=client_of(request))
    return out

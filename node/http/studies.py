"""GET /api/studies/{StudyInstanceUID}: one study in detail."""

from __future__ import annotations

import logging
from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, Request, status

from node.http.context import WebContext
from node.http.deps import Context, Reader, client_of
from node.http.schemas import StudyOut
from storage.worklist import entries_for

logger = logging.getLogger(__name__)
router = APIRouter(prefix="/api", tags=["studies"])

UID = r"^[0-9]+(\.[0-9]+)*$"
StudyUID = Annotated[str, Path(pattern=UID, max_length=64,
                               description="StudyInstanceUID")]


def study_out(ctx: WebContext, study_uid: str) -> StudyOut:
    detail = ctx.studies.detail(study_uid)
    if detail is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no such study")
    summary = entries_for(ctx.engine, [detail.pk]).get(study_uid)
    out = StudyOut.of(detail, summary, ctx.feedback.for_study(study_uid))
    for series, found in zip(out.series, detail.series, strict=True):
        if series.result is not None and found.result is not None and found.result.sr_file:
            n = len(series.result.curve)
            names: dict[str, str] = {}
            for p in series.result.curve:  # a multi-frame instance: named by its first slice
                names.setdefault(p.SOPInstanceUID, f"slice {p.position + 1} of {n}")
            series.result.sr_text = _sr_text(ctx, found.result.sr_file, names)
    return out


def _sr_text(ctx: WebContext, file_path: str, names: dict[str, str]) -> str | None:
    """The SR file's content tree as text, the images named by their slice in the curve's
    order; None (and a log line) when it cannot be read."""
    from pydicom import dcmread
    from pydicom.errors import InvalidDicomError

    from node.triage.sr_text import sr_text

    try:
        return sr_text(dcmread(ctx.files.path_of(file_path)), names)
    except (OSError, InvalidDicomError, ValueError, AttributeError) as exc:
        logger.warning("the SR %s cannot be read as text: %s: %s", file_path,
                       type(exc).__name__, exc)
        return None


@router.get("/studies/{study_uid}", response_model=StudyOut)
def get_study(request: Request, ctx: Context, who: Reader, study_uid: StudyUID) -> StudyOut:
    out = study_out(ctx, study_uid)
    ctx.audit.record("study_view", actor=who.actor, token_pk=who.token.pk, study_uid=study_uid,
                     client=client_of(request))
    return out

"""POST /api/studies/{study}/feedback: a radiologist's word on the study's labels."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, Request, status
from pydantic import BaseModel, Field

from ml.labels import LABELS
from node.http.context import WebContext
from node.http.deps import Context, Principal, Radiologist, Reader, check_csrf, client_of
from node.http.schemas import FeedbackIn, FeedbackOut
from node.http.studies import StudyUID
from storage.feedback import ResultMismatchError, UnknownStudyError

router = APIRouter(prefix="/api", tags=["feedback"])


def give_feedback(ctx: WebContext, who: Principal, request: Request, study_uid: str,
                  labels: dict[str, bool], result_id: int | None) -> list[FeedbackOut]:
    unknown = sorted(set(labels) - set(LABELS))
    if unknown:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT,
                            f"unknown labels {unknown}; known: {', '.join(LABELS)}")
    try:
        entries = ctx.feedback.add(study_uid, labels, author=who.actor, token_pk=who.token.pk,
                                   result_pk=result_id)
    except UnknownStudyError:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no such study") from None
    except ResultMismatchError:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT,
                            "result_id is not a result of this study") from None
    verdicts = ", ".join(f"{e.label} {e.verdict}" for e in entries)
    ctx.audit.record("feedback", actor=who.actor, token_pk=who.token.pk, study_uid=study_uid,
                     detail=verdicts, client=client_of(request))
    return [FeedbackOut.of(e) for e in entries]


@router.post("/studies/{study_uid}/feedback", response_model=list[FeedbackOut],
             status_code=status.HTTP_201_CREATED)
def post_feedback(request: Request, ctx: Context, who: Radiologist, study_uid: StudyUID,
                  body: FeedbackIn) -> list[FeedbackOut]:
    """Bearer tokens post as they are; a page session also sends X-CSRF-Token."""
    check_csrf(request, who, None)
    return give_feedback(ctx, who, request, study_uid, body.labels, body.result_id)


class LabelAgreement(BaseModel):
    label: str
    confirmed: int
    corrected: int
    ratio: float | None = Field(description="confirmed / (confirmed + corrected)")


class DayAgreement(LabelAgreement):
    day: str = Field(description="YYYY-MM-DD, UTC")


class Agreement(BaseModel):
    overall: list[LabelAgreement] = Field(description="the newest word per study and label")
    by_day: list[DayAgreement] = Field(description="every word on a result, by day given")


@router.get("/feedback/agreement", response_model=Agreement)
def get_agreement(ctx: Context, who: Reader,
                  days: Annotated[int, Query(ge=1, le=3660)] = 90) -> Agreement:
    """How often radiologists confirmed the model's call, per label, and over time."""
    since = datetime.now(UTC) - timedelta(days=days)
    overall = [LabelAgreement(label=a.label, confirmed=a.confirmed, corrected=a.corrected,
                              ratio=a.ratio) for a in ctx.feedback.agreement()]
    by_day = [DayAgreement(day=d, label=label, confirmed=c, corrected=k,
                           ratio=c / (c + k) if c + k else None)
              for d, label, c, k in ctx.feedback.agreement_by_day(since)]
    return Agreement(overall=overall, by_day=by_day)

"""The pages: the worklist at / (rows drawn by static/worklist.js from /api/worklist) and
a study at /studies/{uid}, with its key slices, curve, findings and the feedback form."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Form, HTTPException, Request, status
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates

from ml.labels import LABELS
from node.http.bounds import row_id
from node.http.deps import Context, PageRadiologist, PageReader, check_csrf, client_of
from node.http.plot import curve_svg
from node.http.studies import StudyUID
from storage.tokens import Role

TEMPLATES = Jinja2Templates(directory=Path(__file__).with_name("templates"))
router = APIRouter(tags=["pages"], include_in_schema=False)
SHORT = {"any": "any", "epidural": "EDH", "intraparenchymal": "IPH", "intraventricular": "IVH",
         "subarachnoid": "SAH", "subdural": "SDH"}


def render(request: Request, name: str, context: dict[str, Any], *,
           status_code: int = 200) -> Response:
    return TEMPLATES.TemplateResponse(request, name, {"short": SHORT, "labels": LABELS,
                                                      **context}, status_code=status_code)


@router.get("/", response_class=HTMLResponse)
def worklist_page(request: Request, who: PageReader) -> Response:
    return render(request, "worklist.html", {"who": who, "statuses": (
        "receiving", "queued", "processing", "failed", "done", "not_eligible")})


# What the feedback form did, for the page: the redirect's ?notice= names one of these.
NOTICES = {"saved": "Your reading is saved.",
           "empty": "Nothing saved: say present or absent for at least one finding.",
           "stale": "Nothing saved: the study has a newer result than the page showed. "
                    "Check the findings below and give your reading again."}


@router.get("/studies/{study_uid}", response_class=HTMLResponse)
def study_page(request: Request, ctx: Context, who: PageReader, study_uid: StudyUID,
               window: str = "brain", heat: bool = False, notice: str = "") -> Response:
    from node.http.studies import study_out

    study = study_out(ctx, study_uid)
    ctx.audit.record("study_view", actor=who.actor, token_pk=who.token.pk, study_uid=study_uid,
                     client=client_of(request))
    shown = next((s for s in study.series if study.summary
                  and s.SeriesInstanceUID == study.summary.shown_series_uid), None)
    latest: dict[str, bool] = {}
    for f in study.feedback:
        latest[f.label] = f.present
    return render(request, "study.html", {
        "who": who, "study": study, "shown": shown,
        "window": window if window in ("brain", "subdural", "bone") else "brain",
        "heat": heat and ctx.heat_maps is not None, "can_heat": ctx.heat_maps is not None,
        "curve": curve_svg(shown.result.curve) if shown and shown.result else None,
        "latest": latest, "csrf": who.session.csrf if who.session else "",
        "notice": NOTICES.get(notice, ""),
        "can_feedback": who.allows(Role.RADIOLOGIST)})


@router.post("/studies/{study_uid}/feedback")
async def feedback_form(request: Request, ctx: Context, who: PageRadiologist,
                        study_uid: StudyUID,
                        csrf_token: Annotated[str, Form(max_length=100)],
                        result_id: Annotated[str, Form(max_length=20)] = "") -> Response:
    """The form sends label_<name> = present / absent / (empty: no word on it)."""
    from starlette.concurrency import run_in_threadpool

    from node.http.feedback import give_feedback

    check_csrf(request, who, csrf_token)
    form = await request.form()
    labels = {}
    for label in LABELS:
        value = form.get(f"label_{label}", "")
        if value in ("present", "absent"):
            labels[label] = value == "present"
        elif value:
            return Response("label values are present or absent", status_code=422)
    notice = "saved"
    result = row_id(result_id)
    if result_id and result is None:
        return Response("result_id is a row id", status_code=422)
    if not labels:
        notice = "empty"
    else:
        try:
            await run_in_threadpool(give_feedback, ctx, who, request, study_uid, labels,
                                    result)
        except HTTPException as exc:  # a newer result came: said on the page, in words
            if exc.status_code != status.HTTP_422_UNPROCESSABLE_CONTENT:
                raise
            notice = "stale"
    return RedirectResponse(f"/studies/{study_uid}?notice={notice}#feedback",
                            status_code=status.HTTP_303_SEE_OTHER)

"""QIDO-RS study search (PS3.18 10.6.1), so DICOMweb viewers can list the node's studies.

Supported: GET /dicom-web/studies with StudyInstanceUID (comma-separated list), StudyDate
(YYYYMMDD or a range YYYYMMDD-YYYYMMDD, either end open), AccessionNumber (`*`/`?`
wildcards), ModalitiesInStudy, limit (1-1000, default 100), offset, includefield (accepted;
every supported attribute is returned anyway). Answers application/dicom+json (PS3.18 F.2);
an Accept without it is a 406 (PS3.18 8.7.3). A bad key or value (a date that is no day of
the calendar, a control character, an offset past 2^63-1) is a 400 (PS3.18 8.3.4).
Not supported: series and instance levels, WADO-RS retrieval, fuzzy matching, and any
patient attribute (matching on one is a 400; none is returned). A reader token is needed.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

from fastapi import APIRouter, HTTPException, Request, Response, status
from fastapi.responses import JSONResponse

from node.http.bounds import INT64_MAX
from node.http.deps import Context, Reader, client_of
from storage.study_search import StudyMatch, StudyQuery, search_studies

router = APIRouter(prefix="/dicom-web", tags=["dicomweb"])

_DATE = re.compile(r"(\d{8})?(-)?(\d{8})?")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_UID = re.compile(r"[0-9]+(\.[0-9]+)*")
KNOWN = {"StudyInstanceUID", "0020000D", "StudyDate", "00080020", "AccessionNumber",
         "00080050", "ModalitiesInStudy", "00080061", "limit", "offset", "includefield",
         "fuzzymatching"}
ALIASES = {"0020000D": "StudyInstanceUID", "00080020": "StudyDate",
           "00080050": "AccessionNumber", "00080061": "ModalitiesInStudy"}


def _bad(message: str) -> HTTPException:
    return HTTPException(status.HTTP_400_BAD_REQUEST, message)


def parse_query(params: dict[str, str]) -> StudyQuery:
    unknown = sorted(set(params) - KNOWN)
    if unknown:
        raise _bad(f"unsupported query keys {unknown}: see the OpenAPI description")
    p = {ALIASES.get(k, k): v for k, v in params.items()}
    if any(_CONTROL.search(v) for v in p.values()):
        raise _bad("query values hold no control characters (PS3.5 6.2)")
    if p.get("fuzzymatching", "false") != "false":
        raise _bad("fuzzy matching is not supported")
    uids = tuple(u for u in p.get("StudyInstanceUID", "").split(",") if u)
    if any(not _UID.fullmatch(u) or len(u) > 64 for u in uids):
        raise _bad("StudyInstanceUID: UIDs of digits and dots")
    date_from = date_to = None
    if p.get("StudyDate"):
        match = _DATE.fullmatch(p["StudyDate"])
        if not match or not (match[1] or match[3]) or (match[3] and not match[2]):
            raise _bad("StudyDate: YYYYMMDD or YYYYMMDD-YYYYMMDD (either end may be open)")
        date_from = match[1]
        date_to = match[3] if match[2] else match[1]
        if not all(_calendar_day(d) for d in (date_from, date_to) if d):
            raise _bad("StudyDate: not a day of the calendar")
    try:
        limit, offset = int(p.get("limit", "100")), int(p.get("offset", "0"))
    except ValueError:
        raise _bad("limit and offset are whole numbers") from None
    if not 1 <= limit <= 1000 or not 0 <= offset <= INT64_MAX:
        raise _bad(f"limit: 1-1000; offset: 0-{INT64_MAX}")
    accession = p.get("AccessionNumber") or None
    modality = p.get("ModalitiesInStudy") or None
    if (accession and len(accession) > 16) or (modality and len(modality) > 16):
        raise _bad("AccessionNumber and ModalitiesInStudy: at most 16 characters")
    return StudyQuery(uids, date_from, date_to, accession, modality, limit, offset)


def _calendar_day(value: str) -> bool:
    try:
        datetime.strptime(value, "%Y%m%d")
    except ValueError:
        return False
    return True


ANSWERS = ("application/dicom+json", "application/json", "application/*", "*/*")


def acceptable(accept: str) -> bool:
    """Whether an Accept header (RFC 9110 12.5.1) allows application/dicom+json, the one
    media type this node answers a search with (PS3.18 8.7.3); a missing Accept does."""
    ranges = [part.split(";")[0].strip().lower() for part in accept.split(",")]
    return not any(ranges) or any(r in ANSWERS for r in ranges)


def _element(vr: str, value: Any) -> dict[str, Any]:
    if value in ("", None, ()):
        return {"vr": vr}
    return {"vr": vr, "Value": list(value) if isinstance(value, tuple) else [value]}


def to_dicom_json(m: StudyMatch) -> dict[str, Any]:
    return {
        "00080020": _element("DA", m.study_date),
        "00080030": _element("TM", m.study_time),
        "00080050": _element("SH", m.accession_number),
        "00080061": _element("CS", m.modalities),
        "00081030": _element("LO", m.study_description),
        "0020000D": _element("UI", m.study_uid),
        "00201206": _element("IS", m.series),
        "00201208": _element("IS", m.instances),
    }


@router.get("/studies", responses={200: {"content": {"application/dicom+json": {}}},
                                   204: {"description": "no study matches"},
                                   400: {"description": "a query key or value this node "
                                                        "does not support (PS3.18 8.3.4)"},
                                   406: {"description": "an Accept without "
                                                        "application/dicom+json"}})
def search(request: Request, ctx: Context, who: Reader) -> Response:
    """QIDO-RS Search for Studies; see this module's description for what is supported."""
    if not acceptable(request.headers.get("accept", "")):
        raise HTTPException(status.HTTP_406_NOT_ACCEPTABLE,
                            "this node answers application/dicom+json only")
    query = parse_query(dict(request.query_params))
    matches = search_studies(ctx.engine, query)
    ctx.audit.record("qido_search", actor=who.actor, token_pk=who.token.pk,
                     detail=f"{len(matches)} studies", client=client_of(request))
    if not matches:
        return Response(status_code=status.HTTP_204_NO_CONTENT)
    return JSONResponse([to_dicom_json(m) for m in matches],
                        media_type="application/dicom+json")

"""GET /api/studies/{study}/series/{series}/slices/{index}.png: one slice through a display
window, as an 8-bit grayscale PNG (HU by ml.windowing, PS3.3 C.11.1)."""

from __future__ import annotations

import io
from typing import Annotated, Literal

import numpy as np
from fastapi import APIRouter, HTTPException, Path, Query, Request, Response, status

from ml.errors import SliceError
from ml.windowing import WINDOWS, apply_window, load_slice
from node.http.deps import Context, Reader, client_of
from node.http.studies import UID, StudyUID

router = APIRouter(prefix="/api", tags=["images"])

WindowName = Literal["brain", "subdural", "bone"]


def render_png(hu: np.ndarray, window: str) -> bytes:
    """(rows, cols) HU to PNG bytes through the named window."""
    from PIL import Image

    pixels = np.rint(apply_window(hu, WINDOWS[window]) * 255.0).astype(np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(out, format="PNG", compress_level=1)
    return out.getvalue()


@router.get("/studies/{study_uid}/series/{series_uid}/slices/{index}.png",
            response_class=Response,
            responses={200: {"content": {"image/png": {}}}, 404: {}})
def get_slice(
    request: Request, ctx: Context, who: Reader, study_uid: StudyUID,
    series_uid: Annotated[str, Path(pattern=UID, max_length=64)],
    index: Annotated[int, Path(ge=0, le=100_000, description="slice in the curve's order")],
    window: Annotated[WindowName, Query()] = "brain",
) -> Response:
    found = ctx.studies.slice_file(study_uid, series_uid, index)
    if found is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no such slice")
    try:
        _, hu = load_slice(ctx.files.path_of(found.file_path))
    except SliceError as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT,
                            "the slice cannot be decoded") from exc
    if found.frame >= hu.shape[0]:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no such frame")
    png = render_png(hu[found.frame], window)
    ctx.audit.record("image_view", actor=who.actor, token_pk=who.token.pk, study_uid=study_uid,
                     detail=f"series {series_uid} slice {index} {window}"[:200],
                     client=client_of(request))
    return Response(png, media_type="image/png", headers={"Cache-Control": "private, max-age=300"})

"""GET /api/studies/{study}/series/{series}/slices/{index}.png: one slice through a display
window, as an 8-bit grayscale PNG (HU by ml.windowing, PS3.3 C.11.1)."""

from __future__ import annotations

import io
import logging
from typing import Annotated, Literal

import numpy as np
from fastapi import APIRouter, HTTPException, Path, Query, Request, Response, status

from ml.errors import ModelError, SliceError
from ml.labels import LABELS
from ml.windowing import WINDOWS, apply_window, load_slice
from node.http.deps import Context, Reader, client_of
from node.http.saliency import ModelMismatch
from node.http.studies import UID, StudyUID

logger = logging.getLogger(__name__)
router = APIRouter(prefix="/api", tags=["images"])

WindowName = Literal["brain", "subdural", "bone"]


def render_png(hu: np.ndarray, window: str) -> bytes:
    """(rows, cols) HU to PNG bytes through the named window."""
    pixels = np.rint(apply_window(hu, WINDOWS[window]) * 255.0).astype(np.uint8)
    return _png(pixels, "L")


def render_heat_png(hu: np.ndarray, heat: np.ndarray, window: str) -> bytes:
    """The windowed slice with the heat map over it (ml.saliency.overlay), RGB PNG."""
    from ml.saliency import overlay

    return _png(overlay(apply_window(hu, WINDOWS[window]), heat), "RGB")


def _png(pixels: np.ndarray, mode: str) -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.fromarray(pixels, mode=mode).save(out, format="PNG", compress_level=1)
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


@router.get("/studies/{study_uid}/series/{series_uid}/slices/{index}/heatmap.png",
            response_class=Response,
            responses={200: {"content": {"image/png": {}}}, 404: {}, 409: {}, 503: {}})
def get_heat_map(
    request: Request, ctx: Context, who: Reader, study_uid: StudyUID,
    series_uid: Annotated[str, Path(pattern=UID, max_length=64)],
    index: Annotated[int, Path(ge=0, le=100_000, description="slice in the curve's order")],
    label: Annotated[Literal[LABELS], Query()] = "any",  # type: ignore[valid-type]
    window: Annotated[WindowName, Query()] = "brain",
) -> Response:
    """Where the model looked: Grad-CAM of `label` on the slice (ml.saliency), over the
    windowed slice, by the registered model that made the series' newest result (409 when no
    registered model did)."""
    volume = ctx.studies.result_volume(study_uid, series_uid)
    if volume is None or index >= len(volume.slices):
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no such slice with a result")
    if ctx.heat_maps is None:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "no model for heat maps here")
    try:
        hu, heat = ctx.heat_maps.heat([ctx.files.path_of(p) for p, _ in volume.slices],
                                      [f for _, f in volume.slices], index, label,
                                      volume.model_version, volume.model_pk)
    except ModelMismatch as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from None
    except (SliceError, IndexError) as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT,
                            "a slice of the series cannot be decoded") from exc
    except (OSError, ModelError) as exc:
        logger.warning("heat map of %s: %s", study_uid, exc)
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE,
                            "the model cannot be loaded") from None
    png = render_heat_png(hu, heat, window)
    ctx.audit.record("heatmap_view", actor=who.actor, token_pk=who.token.pk,
                     study_uid=study_uid, detail=f"series {series_uid} slice {index} {label}",
                     client=client_of(request))
    return Response(png, media_type="image/png", headers={"Cache-Control": "private, max-age=300"})

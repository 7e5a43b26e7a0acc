"""The key-image fallback: the key slice of a finding with the heat map and the finding
burnt in, as a DICOM Secondary Capture Image (PS3.3 A.8.1), marked "AI result, not for
diagnosis". Many PACS viewers show no SR at all, and OHIF v3 shows only measurement SRs with
image regions; an image is what every viewer shows.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
from highdicom.sc import SCImage
from PIL import Image, ImageDraw, ImageFont
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from ml.planes import pixel_spacing_of
from ml.saliency import overlay
from ml.windowing import BRAIN, apply_window

if TYPE_CHECKING:
    from ml.inference import Classifier, SeriesPrediction

WARNING = "AI RESULT - NOT FOR DIAGNOSIS"
SERIES_DESCRIPTION = "ICH triage key image (AI) - not for diagnostic use"
SERIES_NUMBER = 9001  # beside the SR's 9000


_LETTERS = (("R", "L"), ("A", "P"), ("F", "H"))  # negative, positive end of x, y, z


def patient_orientation(ref: Dataset) -> tuple[str, str]:
    """The row and column directions of the slice as PS3.3 C.7.6.1.1.1 letters (the main
    axis of each), from Image Orientation (Patient); axial ("L", "P") when it is absent."""
    cosines = [float(v) for v in ref.get("ImageOrientationPatient", [])]
    if len(cosines) != 6:
        return ("L", "P")
    out = []
    for vector in (cosines[:3], cosines[3:]):
        axis = int(np.argmax(np.abs(vector)))
        out.append(_LETTERS[axis][vector[axis] > 0])
    return out[0], out[1]


def burn_in(rgb: np.ndarray, lines: list[str]) -> np.ndarray:
    """`lines` written in white on black bars, the first at the top, the rest at the bottom."""
    image = Image.fromarray(rgb, mode="RGB")
    draw = ImageDraw.Draw(image)
    size = max(10, rgb.shape[0] // 32)
    font = ImageFont.load_default(size=size)
    bar = size + size // 2
    draw.rectangle((0, 0, image.width, bar), fill=(0, 0, 0))
    draw.text((size // 2, size // 4), lines[0], fill=(255, 255, 255), font=font)
    rest = lines[1:]
    if rest:
        top = image.height - bar * len(rest)
        draw.rectangle((0, top, image.width, image.height), fill=(0, 0, 0))
        for i, line in enumerate(rest):
            draw.text((size // 2, top + i * bar + size // 4), line, fill=(255, 255, 255),
                      font=font)
    return np.asarray(image)


def build_key_image(ref: Dataset, hu: np.ndarray, heat: np.ndarray, *, label: str,
                    probability: float, model: str, series_uid: str, sop_uid: str,
                    instance_number: int, manufacturer: str) -> SCImage:
    """A Secondary Capture of the slice `ref` (its header: patient and study are copied)
    through the brain window, with `heat` over it and the finding and warning burnt in."""
    if hu.shape != heat.shape:
        raise ValueError(f"hu {hu.shape} and heat {heat.shape} differ in shape")
    if not 0.0 <= probability <= 1.0:
        raise ValueError(f"probability must be in [0, 1], got {probability}")
    rgb = burn_in(overlay(apply_window(hu, BRAIN), heat), [
        WARNING, f"{label}: probability {probability:.2f}",
        f"where the model looked (Grad-CAM), model {model}"])
    sc = SCImage.from_ref_dataset(
        ref_dataset=ref, pixel_array=rgb, photometric_interpretation="RGB", bits_allocated=8,
        coordinate_system="PATIENT", patient_orientation=patient_orientation(ref),
        series_instance_uid=series_uid,
        series_number=SERIES_NUMBER, sop_instance_uid=sop_uid,
        instance_number=instance_number, manufacturer=manufacturer,
        transfer_syntax_uid="1.2.840.10008.1.2.1")
    sc.BurnedInAnnotation = "YES"
    if ref.get("BodyPartExamined"):  # a head is no paired structure: no Laterality (2C)
        sc.BodyPartExamined = ref.BodyPartExamined
    sc.SeriesDescription = SERIES_DESCRIPTION
    sc.ImageComments = f"{WARNING}. {label} {probability:.2f}; model {model}"
    return sc


def key_images(classifier: Classifier, slices: Sequence[np.ndarray], sources: Sequence[Dataset],
               prediction: SeriesPrediction, *, manufacturer: str,
               model: str | None = None) -> list[SCImage]:
    """One key image per finding called present (each subtype; "any" alone when no subtype
    is called), its slice the one the model found most probable. `slices` are the volume's HU
    slices in its order and `sources` the header of each slice's instance. `model` names the
    model in the burnt-in text and ImageComments as the SR does (the registry's name and
    version); without it, the first 12 hex digits of its weights' sha256."""
    from ml.saliency import heat_on_slice

    if len(slices) != len(sources):
        raise ValueError(f"{len(slices)} slices but {len(sources)} source headers")
    called = [label for label in classifier.card.labels if prediction.calls.get(label)]
    labels = [label for label in called if label != "any"] or called
    series_uid = generate_uid()
    images = []
    for n, label in enumerate(labels, start=1):
        index = prediction.key_slices[label]
        heat = heat_on_slice(classifier, slices, index, label,
                             pixel_spacing=pixel_spacing_of(sources[index]))
        j = list(classifier.card.labels).index(label)
        images.append(build_key_image(
            sources[index], np.asarray(slices[index]), heat, label=label,
            probability=float(prediction.series[j]), model=model or classifier.card.sha256[:12],
            series_uid=series_uid, sop_uid=generate_uid(), instance_number=n,
            manufacturer=manufacturer))
    return images

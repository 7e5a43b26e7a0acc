"""Which series the triage model reads: a configurable rule set over a series' instances."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from pydicom.uid import UID

CT_IMAGE_STORAGE = UID("1.2.840.10008.5.1.4.1.1.2")
ENHANCED_CT_IMAGE_STORAGE = UID("1.2.840.10008.5.1.4.1.1.2.1")


@dataclass(frozen=True)
class SeriesFacts:
    """What the index knows about a series, enough to decide eligibility."""

    modality: str
    body_part: str
    sop_classes: frozenset[str]
    image_types: frozenset[str]  # ImageType values as stored, e.g. "ORIGINAL\\PRIMARY\\AXIAL"
    slices: int  # instances, or frames for multi-frame objects


@dataclass(frozen=True)
class EligibilityRules:
    modalities: frozenset[str] = frozenset({"CT"})
    sop_classes: frozenset[str] = frozenset({CT_IMAGE_STORAGE, ENHANCED_CT_IMAGE_STORAGE})
    body_parts: frozenset[str] = frozenset({"HEAD", "BRAIN", "SKULL", ""})
    min_slices: int = 8

    def __post_init__(self) -> None:
        if self.min_slices < 1:
            raise ValueError(f"min_slices must be >= 1, got {self.min_slices}")

    @classmethod
    def create(cls, *, min_slices: int, body_parts: Iterable[str]) -> EligibilityRules:
        return cls(min_slices=min_slices, body_parts=frozenset(p.upper() for p in body_parts))

    def reason_to_skip(self, facts: SeriesFacts) -> str | None:
        """None when the series is triaged, else why not (kept on the series row)."""
        if facts.modality.upper() not in self.modalities:
            return f"modality {facts.modality or '(none)'} is not {'/'.join(sorted(self.modalities))}"
        other = facts.sop_classes - self.sop_classes
        if other or not facts.sop_classes:
            return f"SOP class {', '.join(sorted(other)) or '(none)'} is not a CT image"
        if facts.body_part.upper() not in self.body_parts:
            return f"body part {facts.body_part} is not a head"
        for image_type in facts.image_types:
            values = [v.strip().upper() for v in image_type.split("\\")]
            if not values or values[0] != "ORIGINAL":
                return f"image type {image_type or '(none)'} is not ORIGINAL"
            if "LOCALIZER" in values:
                return "localizer (scout) images"
            # Axial is the third value for CT Image (PS3.3 C.8.2.1.1.1); Enhanced CT uses
            # frame-level types, so only a present, non-axial third value disqualifies.
            if len(values) > 2 and values[2] not in ("AXIAL", ""):
                return f"image type {image_type} is not axial"
        if facts.slices < self.min_slices:
            return f"{facts.slices} slice(s), fewer than {self.min_slices}"
        return None

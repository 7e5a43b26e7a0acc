"""A DICOM SR's content tree as readable text, for the study page and API: each content item
on its own line, indented by its depth (PS3.3 C.17.3), as `Concept name: value`.

Written for the node's own triage SR (`node.triage.sr`, TID 1500) but generic: CONTAINER
items are headings, TEXT, CODE, NUM (with its unit unless it is UCUM "1", no units), UIDREF,
DATE, TIME, DATETIME and IMAGE/COMPOSITE (the referenced SOP Instance UID, and frames) have
their value; a run of IMAGE items of one concept (the series' source images) is folded into a
count. PNAME values are not shown (no person's name leaves the node through the HTTP side);
nothing of the SR's header (patient, study) is read at all.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from pydicom.dataset import Dataset

INDENT = "  "
# Folded into one line when a parent has more than this many IMAGE items of one concept.
MAX_IMAGES_LISTED = 3


def sr_text(ds: Dataset, image_names: Mapping[str, str] | None = None) -> str:
    """The SR `ds` as text lines (newline-separated): its document title with the completion
    and verification flags, then its content tree. `image_names` names referenced images by
    SOP Instance UID (e.g. "slice 12 of 30"), shown before the UID. Raises ValueError for a
    data set that is not an SR document (no ContentSequence)."""
    if "ContentSequence" not in ds:
        raise ValueError("ds: not an SR document (no ContentSequence)")
    title = _name(ds) or "Structured report"
    flags = [str(ds.get(k, "")) for k in ("CompletionFlag", "VerificationFlag")]
    head = f"{title} [{', '.join(f for f in flags if f)}]" if any(flags) else title
    lines = [head]
    description = str(ds.get("CompletionFlagDescription", "")).strip()
    if description:
        lines.append(f"{INDENT}Completion: {description}")
    lines += _tree(ds.ContentSequence, 1, image_names or {})
    return "\n".join(lines)


def _tree(items: Sequence[Dataset], depth: int, names: Mapping[str, str]) -> Iterator[str]:
    pad = INDENT * depth
    i = 0
    while i < len(items):
        item = items[i]
        if str(item.get("ValueType", "")) == "IMAGE":
            run = _image_run(items, i)
            if len(run) > MAX_IMAGES_LISTED:
                yield f"{pad}{_name(item) or 'Image'}: {len(run)} images"
                i += len(run)
                continue
        yield f"{pad}{_line(item, names)}"
        if "ContentSequence" in item:
            yield from _tree(item.ContentSequence, depth + 1, names)
        i += 1


def _image_run(items: Sequence[Dataset], start: int) -> list[Dataset]:
    """The IMAGE items from `start` on with the same concept name and no children."""
    name = _name(items[start])
    run = []
    for item in items[start:]:
        if (str(item.get("ValueType", "")) != "IMAGE" or _name(item) != name
                or "ContentSequence" in item):
            break
        run.append(item)
    return run


def _line(item: Dataset, names: Mapping[str, str]) -> str:
    name = _name(item)
    value = _value(item, names)
    if not value:
        return name or str(item.get("ValueType", "?"))
    return f"{name}: {value}" if name else value


def _name(item: Dataset) -> str:
    codes = item.get("ConceptNameCodeSequence")
    return str(codes[0].get("CodeMeaning", "")).strip() if codes else ""


def _value(item: Dataset, names: Mapping[str, str]) -> str:
    kind = str(item.get("ValueType", ""))
    if kind == "TEXT":
        return str(item.get("TextValue", ""))
    if kind == "CODE":
        codes = item.get("ConceptCodeSequence")
        return str(codes[0].get("CodeMeaning", "")) if codes else ""
    if kind == "NUM":
        return _number(item)
    if kind in ("UIDREF", "DATE", "TIME", "DATETIME"):
        keyword = {"UIDREF": "UID", "DATE": "Date", "TIME": "Time", "DATETIME": "DateTime"}[kind]
        return str(item.get(keyword, ""))
    if kind in ("IMAGE", "COMPOSITE"):
        return _reference(item, names)
    if kind == "PNAME":
        return "(a name, not shown)"
    return "" if kind == "CONTAINER" else f"({kind.lower()})"


def _number(item: Dataset) -> str:
    measured = item.get("MeasuredValueSequence")
    if not measured:
        return "(no value)"
    value = measured[0]
    number = str(value.get("NumericValue", ""))
    units = value.get("MeasurementUnitsCodeSequence")
    unit: Any = units[0].get("CodeValue", "") if units else ""
    return number if unit in ("", "1") else f"{number} {unit}"


def _reference(item: Dataset, names: Mapping[str, str]) -> str:
    refs = item.get("ReferencedSOPSequence")
    if not refs:
        return ""
    ref = refs[0]
    uid = str(ref.get("ReferencedSOPInstanceUID", ""))
    text = f"{names[uid]} ({uid})" if uid in names else uid
    frames = ref.get("ReferencedFrameNumber")
    if frames is not None:
        numbers = list(frames) if isinstance(frames, Sequence) else [frames]
        text += f" frame {', '.join(str(f) for f in numbers)}"
    return text

"""The content tree of the node's triage SR, read off a report the node's own builder makes.

`sample_report` builds a report with `node.triage.sr.build_triage_sr` on a made-up three-slice
series (no patient data: every value is a placeholder), and `content_tree` walks its Content
Sequence. So the conformance statement's TID 1500 section shows what the code writes, not what
someone remembered it writes.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime

from pydicom.dataset import Dataset
from pydicom.uid import CTImageStorage

from ml.labels import LABELS
from node.triage.sr import AlgorithmInfo, LabelResult, build_triage_sr

# Fixed placeholders: the tree is read for its structure, never for these values.
_STUDY, _SERIES = "1.2.826.0.1.3680043.10.1.1", "1.2.826.0.1.3680043.10.1.2"
_WHEN = datetime(2000, 1, 1)


@dataclass(frozen=True)
class TreeItem:
    """One content item: its depth below the root, relationship, value type and concept."""

    depth: int
    relationship: str  # empty for the root
    value_type: str
    concept: str  # "(value, scheme, meaning)", or "" where the item has no concept name
    value: str  # coded value, unit or template reference where it says something; else ""


def sample_report(*, present: tuple[str, ...] = ("any",),
                  complete: bool = False) -> Dataset:
    """A report on a placeholder three-slice CT series: `present` labels called present (with
    a key slice), the others absent; `complete` False writes the provisional (PARTIAL) form."""
    unknown = set(present) - set(LABELS)
    if unknown:
        raise ValueError(f'Argument "present" has unknown labels {sorted(unknown)}.')
    source = [_slice(i) for i in range(3)]
    results = [LabelResult(label=label, probability=0.9 if label in present else 0.1,
                           present=label in present, threshold=0.5,
                           key_slice=1 if label in present else None) for label in LABELS]
    algorithm = AlgorithmInfo(name="ichnet_seq", version="placeholder",
                              parameters={"windows": "brain,subdural,bone"})
    return build_triage_sr(source, results, algorithm, content_datetime=_WHEN,
                           series_instance_uid="1.2.826.0.1.3680043.10.1.3",
                           device_uid="1.2.826.0.1.3680043.10.1.4", complete=complete,
                           notes=["3 of 3 images of the series read", "a placeholder note"])


def content_tree(report: Dataset) -> list[TreeItem]:
    """Every content item of `report`, depth first, in document order."""
    root = TreeItem(0, "", str(report.ValueType), _concept(report), "")
    return [root, *_children(report, 1)]


def _children(item: Dataset, depth: int) -> Iterator[TreeItem]:
    for child in item.get("ContentSequence", []):
        yield TreeItem(depth, str(child.RelationshipType), str(child.ValueType),
                       _concept(child), _value(child))
        yield from _children(child, depth + 1)


def _concept(item: Dataset) -> str:
    if "ConceptNameCodeSequence" not in item:
        return ""
    code = item.ConceptNameCodeSequence[0]
    return _code(code)


def _code(code: Dataset) -> str:
    return f"({code.CodeValue}, {code.CodingSchemeDesignator}, \"{code.CodeMeaning}\")"


def _value(item: Dataset) -> str:
    kind = str(item.ValueType)
    if kind == "CODE":
        return _code(item.ConceptCodeSequence[0])
    if kind == "NUM":
        unit = item.MeasuredValueSequence[0].MeasurementUnitsCodeSequence[0]
        return f"unit {_code(unit)}"
    if kind == "IMAGE":
        return f"{item.ReferencedSOPSequence[0].ReferencedSOPClassUID.name} reference"
    return ""


def _slice(index: int) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = f"{_SERIES}.{index + 1}"
    ds.StudyInstanceUID = _STUDY
    ds.SeriesInstanceUID = _SERIES
    ds.Modality = "CT"
    ds.PatientName = "PLACEHOLDER^PATIENT"
    ds.PatientID = "PLACEHOLDER"
    ds.PatientBirthDate = ""
    ds.PatientSex = ""
    ds.AccessionNumber = ""
    ds.StudyID = "1"
    ds.StudyDate = "20000101"
    ds.StudyTime = "000000"
    ds.ReferringPhysicianName = ""
    ds.InstanceNumber = index + 1
    return ds

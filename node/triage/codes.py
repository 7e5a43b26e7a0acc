"""Coded concepts of the triage structured report (PS3.16), one place for all of them.

Standard codes are looked up in pydicom's code dictionary (`pydicom.sr.codedict.codes`, built
from PS3.16): the lookup itself is the check, and it fails at import if a code is not there.
The dictionary has no SNOMED CT concept for the five hemorrhage subtypes, nor a "probability of
X" concept for any of them, so those come from the private scheme 99ICHT (a designator that
starts with "99" is private, PS3.3 8.2). Every SR that uses it declares it in the Coding Scheme
Identification Sequence of the SOP Common module (PS3.3 C.12.1). No SNOMED code is made up here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

PRIVATE_SCHEME = "99ICHT"
PRIVATE_SCHEME_NAME = "ICH triage node private codes"
PRIVATE_SCHEME_ORGANIZATION = "ICH triage node (open source)"

# pydicom _concepts_dict.py, SCT 1386000 "Intracranial hemorrhage (disorder)"; the meaning is
# shown without its "(disorder)" tag (the code value and scheme are what identify it).
INTRACRANIAL_HEMORRHAGE = Code(codes.SCT.IntracranialHemorrhage.value, "SCT",
                               "Intracranial hemorrhage")
# pydicom _cid_dict.py, CID 241 "Present/Absent Only": SCT 52101004 and SCT 272519000.
# (pydicom's CID 241 has 272519000 for "Absent", not 2667000: we follow the dictionary.)
PRESENT: Code = codes.cid241.Present
ABSENT: Code = codes.cid241.Absent
# pydicom _cid_dict.py, CID 7181 "Abstract Multi-dimensional Image Model Component Units":
# UCUM "1", the unit of a dimensionless ratio; a probability is a number in [0, 1].
PROBABILITY_UNIT: Code = codes.cid7181.NoUnits
# pydicom _concepts_dict.py, LN 24725-4 "Head CT" (in CID 646; TID 1500's CID 100 is baseline,
# so a more specific procedure than "CT unspecified body region" may be used).
PROCEDURE_REPORTED: Code = codes.LN.HeadCT
# pydicom _concepts_dict.py, DCM 121106 "Comment": the report's notes on the volume read.
COMMENT: Code = codes.DCM.Comment
# pydicom _cid_dict.py, CID 7021 "Measurement Report Document Titles": DCM 126000.
REPORT_TITLE: Code = codes.cid7021.ImagingMeasurementReport
# pydicom _cid_dict.py, CID 270 "Observer Type": DCM 121007 "Device".
DEVICE_OBSERVER: Code = codes.cid270.Device


def _private(value: str, meaning: str) -> Code:
    return Code(value=value, scheme_designator=PRIVATE_SCHEME, meaning=meaning)


@dataclass(frozen=True)
class LabelConcepts:
    """The two concept names that carry one label's result in the report."""

    finding: Code  # name of the qualitative evaluation, valued PRESENT or ABSENT
    probability: Code  # name of the numeric measurement, in PROBABILITY_UNIT


LABEL_CONCEPTS: Mapping[str, LabelConcepts] = MappingProxyType({
    "any": LabelConcepts(
        INTRACRANIAL_HEMORRHAGE,
        _private("ICHT100", "Probability of intracranial hemorrhage"),
    ),
    "epidural": LabelConcepts(
        _private("ICHT001", "Epidural hemorrhage"),
        _private("ICHT101", "Probability of epidural hemorrhage"),
    ),
    "intraparenchymal": LabelConcepts(
        _private("ICHT002", "Intraparenchymal hemorrhage"),
        _private("ICHT102", "Probability of intraparenchymal hemorrhage"),
    ),
    "intraventricular": LabelConcepts(
        _private("ICHT003", "Intraventricular hemorrhage"),
        _private("ICHT103", "Probability of intraventricular hemorrhage"),
    ),
    "subarachnoid": LabelConcepts(
        _private("ICHT004", "Subarachnoid hemorrhage"),
        _private("ICHT104", "Probability of subarachnoid hemorrhage"),
    ),
    "subdural": LabelConcepts(
        _private("ICHT005", "Subdural hemorrhage"),
        _private("ICHT105", "Probability of subdural hemorrhage"),
    ),
})

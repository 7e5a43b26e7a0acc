"""The triage result of one CT series as a DICOM Comprehensive 3D SR (TID 1500, IHE AIR).

The report is a TID 1500 Measurement Report, written with highdicom::

    Imaging Measurement Report (DCM 126000)
      Language, Observer Type = Device + TID 1004 (the node: UID, name, manufacturer, model)
      Procedure reported = Head CT (LN 24725-4)
      Imaging Measurements
        Measurement Group (TID 1501), one for the series
          Tracking Identifier + Tracking UID (the same UID for every report on this series)
          Algorithm Identification (TID 4019): name, version, manufacturer, parameters
              (once, for the group: it covers every measurement and evaluation in it)
          per label, in LABELS order:
            NUM  "Probability of <finding>" in UCUM "1" (no units: a value in [0, 1],
                 to PROBABILITY_DECIMALS places)
                 INFERRED FROM the key slice (Source of Measurement), for a finding called
                 Present only; with its frame number for a multi-frame source
            CODE "<finding>" = Present (SCT 52101004) | Absent (SCT 272519000)
          Source of Measurement: every analysed image (and, for multi-frame images, the
              analysed frames as ReferencedFrameNumber)
          TEXT "Comment" (DCM 121106): which slices were used, what was left out and why,
              and why the result is provisional, when it is

A label is one finding concept: "any" is SNOMED CT "Intracranial hemorrhage" (1386000); the
five subtypes and the probability concepts come from the private scheme 99ICHT, declared in the
Coding Scheme Identification Sequence (see `node.triage.codes` for why and where each code was
checked). One concept per finding, rather than "Hemorrhage" with a finding site, because two of
the five sites (epidural and subdural space) have no code we can check.

The SR joins the source's study (patient and study attributes, and the Current Requested
Procedure Evidence Sequence, come from `source` through highdicom) in a new series of modality
SR. It is unverified: an AI result that waits for a radiologist. Its Completion Flag is
COMPLETE for a result on a whole volume, PARTIAL (with a Completion Flag Description) when the
volume had a gap, too little coverage or unread slices (PS3.3 C.17.2.3).

The SR keeps the source's Specific Character Set, so the patient and study attributes it takes
from the source are written as the source wrote them; the node's own text is ASCII. A source
without one gives an SR without one; a misspelt term that pydicom recognises (e.g. "ISO IR 192")
is written as the standard term.

A newer result for the same series is simply a new SR instance: each call makes a new SOP
Instance UID and, unless `series_instance_uid` is given, a new series (the caller may also give
it a new `series_number`). Nothing is replaced: a PACS keeps both and shows the newest by
Content Date/Time. Both carry the same Tracking UID, derived from the source series.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import cast

from highdicom.coding_schemes import CodingSchemeIdentificationItem
from highdicom.enum import SpecificCharacterSetValues
from highdicom.sr import (
    AlgorithmIdentification,
    CodedConcept,
    Comprehensive3DSR,
    DeviceObserverIdentifyingAttributes,
    Measurement,
    MeasurementReport,
    MeasurementsAndQualitativeEvaluations,
    ObservationContext,
    ObserverContext,
    QualitativeEvaluation,
    SourceImageForMeasurement,
    SourceImageForMeasurementGroup,
    TextContentItem,
    TrackingIdentifier,
)
from highdicom.sr.enum import RelationshipTypeValues
from pydicom.dataset import Dataset
from pydicom.sr.coding import Code
from pydicom.uid import Comprehensive3DSRStorage, generate_uid

from ml.labels import LABELS
from node.triage.codes import (
    ABSENT,
    COMMENT,
    DEVICE_OBSERVER,
    LABEL_CONCEPTS,
    PRESENT,
    PRIVATE_SCHEME,
    PRIVATE_SCHEME_NAME,
    PRIVATE_SCHEME_ORGANIZATION,
    PROBABILITY_UNIT,
    PROCEDURE_REPORTED,
    REPORT_TITLE,
)
from node.triage.sr_inputs import (
    AlgorithmInfo,
    LabelResult,
    check_algorithm,
    check_notes,
    checked_frames,
    checked_previous,
    checked_results,
    checked_source,
)

SERIES_DESCRIPTION = "ICH triage (AI) - not for diagnostic use"
DEVICE_NAME = "ICH triage node"
TRACKING_IDENTIFIER = "ICH triage of the series"
PROBABILITY_DECIMALS = 4
COMPLETION_DESCRIPTION_LENGTH = 64  # LO

# Type 2 in the SR's Patient and General Study modules; highdicom reads each from the source.
_TYPE2_FROM_SOURCE = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex",
                      "AccessionNumber", "StudyID", "StudyDate", "StudyTime",
                      "ReferringPhysicianName")


def build_triage_sr(
    source: Sequence[Dataset],
    results: Sequence[LabelResult],
    algorithm: AlgorithmInfo,
    *,
    series_instance_uid: str | None = None,
    series_number: int = 9000,
    instance_number: int = 1,
    institution_name: str | None = None,
    content_datetime: datetime | None = None,
    device_uid: str | None = None,
    frames: Mapping[str, Sequence[int]] | None = None,
    complete: bool = True,
    notes: Sequence[str] = (),
    completion_description: str | None = None,
    previous_versions: Sequence[object] = (),
) -> Comprehensive3DSR:
    """Build the SR of `results` for the CT series whose instance headers are `source`.

    `source` is in slice order (headers are enough: no pixel data is read); `results` holds
    each label at most once and is written in LABELS order. `device_uid` identifies the node
    as Device Observer; by default a UID derived from the manufacturer, stable across runs.
    `frames` gives, per SOPInstanceUID of a multi-frame source, the frame numbers analysed.
    `complete` False makes the report PARTIAL, `completion_description` (else the first note)
    saying why; `notes` (ASCII lines) say what was used, left out, or missing. `previous_versions` are earlier reports on the series (anything with their
    StudyInstanceUID, SeriesInstanceUID, SOPClassUID and SOPInstanceUID), named in the
    Predecessor Documents Sequence (PS3.3 C.17.2): this report supersedes them.
    Raises TypeError or ValueError naming the offending argument.
    """
    images = checked_source(source)
    ordered = checked_results(results, n_images=len(images))
    frames = checked_frames(frames, images)
    check_notes(notes)
    check_algorithm(algorithm)
    if series_instance_uid is None:
        series_instance_uid = generate_uid()
    elif series_instance_uid == images[0].SeriesInstanceUID:
        raise ValueError('Argument "series_instance_uid" must differ from the source series.')
    when = content_datetime if content_datetime is not None else datetime.now()
    report = MeasurementReport(
        observation_context=_observation_context(algorithm, device_uid),
        procedure_reported=PROCEDURE_REPORTED,
        imaging_measurements=[_measurement_group(images, ordered, algorithm, frames, notes)],
        title=REPORT_TITLE,
    )
    sr = Comprehensive3DSR(
        evidence=_evidence(images),
        content=report,
        series_instance_uid=series_instance_uid,
        series_number=series_number,
        sop_instance_uid=generate_uid(),
        instance_number=instance_number,
        manufacturer=algorithm.manufacturer,
        is_complete=complete,
        institution_name=institution_name,
        series_description=SERIES_DESCRIPTION,
        manufacturer_model_name=algorithm.name,
        software_versions=algorithm.version,
        content_date=when.date(),
        content_time=when.time(),
        series_date=when.date(),
        series_time=when.time(),
        coding_schemes=[CodingSchemeIdentificationItem(
            designator=PRIVATE_SCHEME,
            name=PRIVATE_SCHEME_NAME,
            responsible_organization=PRIVATE_SCHEME_ORGANIZATION,
        )],
        specific_character_set=_character_set(images[0]),
        previous_versions=checked_previous(previous_versions) or None,
    )
    if not complete:
        reason = completion_description or (notes[0] if notes else "incomplete series")
        description = "provisional: " + reason
        sr.CompletionFlagDescription = description[:COMPLETION_DESCRIPTION_LENGTH]
    return sr


def read_triage_sr(ds: Dataset) -> dict[str, tuple[float, bool]]:
    """Per label, (probability, present) from an SR written by `build_triage_sr`."""
    if not isinstance(ds, Dataset):
        raise TypeError(f'Argument "ds" must be a pydicom Dataset, not {type(ds).__name__}.')
    if ds.get("SOPClassUID") != Comprehensive3DSRStorage:
        raise ValueError('Argument "ds" is not a Comprehensive 3D SR.')
    report = Comprehensive3DSR.from_dataset(ds).content  # parsed into TID 1500 on reading
    if not isinstance(report, MeasurementReport):
        raise ValueError('Argument "ds" holds no TID 1500 Measurement Report.')
    by_probability = {_key(c.probability): label for label, c in LABEL_CONCEPTS.items()}
    by_finding = {_key(c.finding): label for label, c in LABEL_CONCEPTS.items()}
    probabilities: dict[str, float] = {}
    presence: dict[str, bool] = {}
    for group in report.get_image_measurement_groups():
        for measurement in group.get_measurements():
            if (label := by_probability.get(_key(measurement.name))) is not None:
                probabilities[label] = float(measurement.value)
        for evaluation in group.get_qualitative_evaluations():
            if (label := by_finding.get(_key(evaluation.name))) is not None:
                presence[label] = _is_present(evaluation.value, label)
    if probabilities.keys() != presence.keys():
        raise ValueError(f'Argument "ds" has probabilities for {sorted(probabilities)} '
                         f'but presence for {sorted(presence)}.')
    return {label: (probabilities[label], presence[label]) for label in LABELS
            if label in probabilities}


# --- content -------------------------------------------------------------------------------------


def _observation_context(algorithm: AlgorithmInfo, device_uid: str | None) -> ObservationContext:
    if device_uid is None:
        device_uid = generate_uid(entropy_srcs=[algorithm.manufacturer, DEVICE_NAME])
    device = DeviceObserverIdentifyingAttributes(
        uid=device_uid,
        name=DEVICE_NAME,
        manufacturer_name=algorithm.manufacturer,
        model_name=algorithm.name,
    )
    return ObservationContext(observer_device_context=ObserverContext(
        observer_type=CodedConcept.from_code(DEVICE_OBSERVER),
        observer_identifying_attributes=device,
    ))


def _measurement_group(images: list[Dataset], results: list[LabelResult],
                       algorithm: AlgorithmInfo, frames: Mapping[str, Sequence[int]],
                       notes: Sequence[str]) -> MeasurementsAndQualitativeEvaluations:
    measurements, evaluations = [], []
    for result in results:
        concepts = LABEL_CONCEPTS[result.label]
        key_image = None
        if result.key_slice is not None:
            ds = images[result.key_slice]
            key_frames = [result.key_frame] if result.key_frame is not None else None
            key_image = [SourceImageForMeasurement(ds.SOPClassUID, ds.SOPInstanceUID,
                                                   referenced_frame_numbers=key_frames)]
        measurements.append(Measurement(
            name=concepts.probability,
            value=round(float(result.probability), PROBABILITY_DECIMALS),
            unit=PROBABILITY_UNIT,
            referenced_images=key_image,
        ))
        evaluations.append(QualitativeEvaluation(
            name=concepts.finding, value=PRESENT if result.present else ABSENT))
    # The same tracking UID for every report on this series: a viewer can follow the finding.
    tracking_uid = generate_uid(entropy_srcs=[TRACKING_IDENTIFIER, images[0].SeriesInstanceUID])
    group = MeasurementsAndQualitativeEvaluations(
        tracking_identifier=TrackingIdentifier(uid=tracking_uid, identifier=TRACKING_IDENTIFIER),
        algorithm_id=_algorithm_identification(algorithm, results),
        measurements=measurements,
        qualitative_evaluations=evaluations,
        source_images=[SourceImageForMeasurementGroup(
            ds.SOPClassUID, ds.SOPInstanceUID,
            referenced_frame_numbers=list(frames[ds.SOPInstanceUID])
            if ds.SOPInstanceUID in frames else None) for ds in images],
    )
    for note in notes:
        group[0].ContentSequence.append(TextContentItem(
            name=COMMENT, value=note, relationship_type=RelationshipTypeValues.CONTAINS))
    return group


def _algorithm_identification(algorithm: AlgorithmInfo,
                              results: list[LabelResult]) -> AlgorithmIdentification:
    """TID 4019, with each label's threshold as a parameter: the calls depend on it."""
    parameters = dict(algorithm.parameters)
    for result in results:
        key, value = f"threshold.{result.label}", f"{float(result.threshold):.4g}"
        if parameters.setdefault(key, value) != value:
            raise ValueError(f'Argument "algorithm.parameters" has {key}={parameters[key]}, '
                             f'but the result for {result.label!r} has threshold {value}.')
    return AlgorithmIdentification(
        name=algorithm.name,
        version=algorithm.version,
        parameters=[f"{key}={value}" for key, value in parameters.items()],
        manufacturer=algorithm.manufacturer,
    )


def _evidence(images: list[Dataset]) -> list[Dataset]:
    """The source, with the Type 2 attributes highdicom copies present (empty if missing)."""
    missing = [keyword for keyword in _TYPE2_FROM_SOURCE if keyword not in images[0]]
    if not missing:
        return images
    first = Dataset()
    first.update(images[0])  # shallow: the source is not changed
    for keyword in missing:
        setattr(first, keyword, None)
    return [first, *images[1:]]


def _key(code: Code | CodedConcept) -> tuple[str, str]:
    return (code.value, code.scheme_designator)


def _is_present(value: object, label: str) -> bool:
    # highdicom types QualitativeEvaluation.value as a number; it is the coded value
    if isinstance(value, (Code, CodedConcept)):
        if _key(value) == _key(PRESENT):
            return True
        if _key(value) == _key(ABSENT):
            return False
    raise ValueError(f'Argument "ds" has {value!r} for {label!r}: not Present or Absent.')


def _character_set(ds: Dataset) -> str | list[str] | None:
    """The source's Specific Character Set, with misspelt terms written as the standard's."""
    value = ds.get("SpecificCharacterSet")
    if value is None or value == "":
        return None
    terms = [value] if isinstance(value, str) else list(value)
    known = {v.value for v in SpecificCharacterSetValues}
    fixed = []
    for term in terms:
        term = str(term).strip().upper()
        if term not in known:
            term = re.sub(r"^ISO[ _-]?IR[ _-]?", "ISO_IR ", term)
        if term == "" and len(terms) > 1:  # the default repertoire, with code extensions
            term = "ISO 2022 IR 6"  # the same repertoire, spelt as highdicom accepts it
        fixed.append(term if term in known else None)
    if any(t is None for t in fixed):
        return "ISO_IR 192"  # an unknown term: names are re-encoded in UTF-8
    return cast(list[str], fixed) if len(fixed) > 1 else cast(str, fixed[0])

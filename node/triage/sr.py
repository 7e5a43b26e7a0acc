"""The triage result of one CT series as a DICOM Comprehensive 3D SR (TID 1500, IHE AIR).

The report is a TID 1500 Measurement Report, written with highdicom::

    Imaging Measurement Report (DCM 126000)
      Language, Observer Type = Device + TID 1004 (the node: UID, name, manufacturer, model)
      Procedure reported = CT unspecified body region (LN 25045-6)
      Imaging Measurements
        Measurement Group (TID 1501), one for the series
          Tracking Identifier + Tracking UID (the same UID for every report on this series)
          Algorithm Identification (TID 4019): name, version, manufacturer, parameters
              (once, for the group: it covers every measurement and evaluation in it)
          per label, in LABELS order:
            NUM  "Probability of <finding>" in UCUM "1" (no units: a value in [0, 1])
                 INFERRED FROM the key slice (Source of Measurement), when one is given
            CODE "<finding>" = Present (SCT 52101004) | Absent (SCT 272519000)
          Source of Measurement: every analysed image

A label is one finding concept: "any" is SNOMED CT "Intracranial hemorrhage" (1386000); the
five subtypes and the probability concepts come from the private scheme 99ICHT, declared in the
Coding Scheme Identification Sequence (see `node.triage.codes` for why and where each code was
checked). One concept per finding, rather than "Hemorrhage" with a finding site, because two of
the five sites (epidural and subdural space) have no code we can check.

The SR joins the source's study (patient and study attributes, and the Current Requested
Procedure Evidence Sequence, come from `source` through highdicom) in a new series of modality
SR. It is complete, preliminary and unverified: an AI result that waits for a radiologist.
Text is written in UTF-8 (ISO_IR 192); pydicom re-encodes names taken from the source.

A newer result for the same series is simply a new SR instance: each call makes a new SOP
Instance UID and, unless `series_instance_uid` is given, a new series (the caller may also give
it a new `series_number`). Nothing is replaced: a PACS keeps both and shows the newest by
Content Date/Time. Both carry the same Tracking UID, derived from the source series.
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from highdicom.coding_schemes import CodingSchemeIdentificationItem
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
    TrackingIdentifier,
)
from pydicom.dataset import Dataset
from pydicom.sr.coding import Code
from pydicom.uid import Comprehensive3DSRStorage, generate_uid

from ml.labels import LABELS
from node.triage.codes import (
    ABSENT,
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

SERIES_DESCRIPTION = "ICH triage (AI) — not for diagnostic use"
DEVICE_NAME = "ICH triage node"
TRACKING_IDENTIFIER = "ICH triage of the series"
CHARACTER_SET = "ISO_IR 192"

_SOURCE_UIDS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPClassUID", "SOPInstanceUID")
# Type 2 in the SR's Patient and General Study modules; highdicom reads each from the source.
_TYPE2_FROM_SOURCE = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex",
                      "AccessionNumber", "StudyID", "StudyDate", "StudyTime",
                      "ReferringPhysicianName")


@dataclass(frozen=True)
class AlgorithmInfo:
    """The model that made the result, for TID 4019 and the General Equipment module."""

    name: str  # e.g. "ichnet_seq"
    version: str  # e.g. the checkpoint's sha256[:12] or a semantic version
    parameters: dict[str, str]  # e.g. windows, input size; written as "key=value"
    manufacturer: str = "ICH triage node (open source)"


@dataclass(frozen=True)
class LabelResult:
    """The model's series-level result for one label."""

    label: str  # one of LABELS
    probability: float  # 0..1
    present: bool  # the model's call at `threshold`
    threshold: float
    key_slice: int | None  # index into `source` of the slice with the highest probability


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
) -> Comprehensive3DSR:
    """Build the SR of `results` for the CT series whose instance headers are `source`.

    `source` is in slice order (headers are enough: no pixel data is read); `results` holds
    each label at most once and is written in LABELS order. `device_uid` identifies the node
    as Device Observer; by default a UID derived from the manufacturer, stable across runs.
    Raises TypeError or ValueError naming the offending argument.
    """
    images = _checked_source(source)
    ordered = _checked_results(results, n_images=len(images))
    _check_algorithm(algorithm)
    if series_instance_uid is None:
        series_instance_uid = generate_uid()
    elif series_instance_uid == images[0].SeriesInstanceUID:
        raise ValueError('Argument "series_instance_uid" must differ from the source series.')
    when = content_datetime if content_datetime is not None else datetime.now()
    report = MeasurementReport(
        observation_context=_observation_context(algorithm, device_uid),
        procedure_reported=PROCEDURE_REPORTED,
        imaging_measurements=[_measurement_group(images, ordered, algorithm)],
        title=REPORT_TITLE,
    )
    return Comprehensive3DSR(
        evidence=_evidence(images),
        content=report,
        series_instance_uid=series_instance_uid,
        series_number=series_number,
        sop_instance_uid=generate_uid(),
        instance_number=instance_number,
        manufacturer=algorithm.manufacturer,
        is_complete=True,
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
        specific_character_set=CHARACTER_SET,
    )


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
                       algorithm: AlgorithmInfo) -> MeasurementsAndQualitativeEvaluations:
    measurements, evaluations = [], []
    for result in results:
        concepts = LABEL_CONCEPTS[result.label]
        key_image = None
        if result.key_slice is not None:
            ds = images[result.key_slice]
            key_image = [SourceImageForMeasurement(ds.SOPClassUID, ds.SOPInstanceUID)]
        measurements.append(Measurement(
            name=concepts.probability,
            value=float(result.probability),
            unit=PROBABILITY_UNIT,
            referenced_images=key_image,
        ))
        evaluations.append(QualitativeEvaluation(
            name=concepts.finding, value=PRESENT if result.present else ABSENT))
    # The same tracking UID for every report on this series: a viewer can follow the finding.
    tracking_uid = generate_uid(entropy_srcs=[TRACKING_IDENTIFIER, images[0].SeriesInstanceUID])
    return MeasurementsAndQualitativeEvaluations(
        tracking_identifier=TrackingIdentifier(uid=tracking_uid, identifier=TRACKING_IDENTIFIER),
        algorithm_id=_algorithm_identification(algorithm, results),
        measurements=measurements,
        qualitative_evaluations=evaluations,
        source_images=[SourceImageForMeasurementGroup(ds.SOPClassUID, ds.SOPInstanceUID)
                       for ds in images],
    )


def _algorithm_identification(algorithm: AlgorithmInfo,
                              results: list[LabelResult]) -> AlgorithmIdentification:
    """TID 4019, with each label's threshold as a parameter: the calls depend on it."""
    parameters = dict(algorithm.parameters)
    for result in results:
        key, value = f"threshold.{result.label}", repr(float(result.threshold))
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


# --- input checks --------------------------------------------------------------------------------


def _checked_source(source: Sequence[Dataset]) -> list[Dataset]:
    if isinstance(source, (str, bytes, Dataset)) or not isinstance(source, Sequence):
        raise TypeError('Argument "source" must be a sequence of pydicom Datasets.')
    if len(source) == 0:
        raise ValueError('Argument "source" must not be empty.')
    for i, ds in enumerate(source):
        if not isinstance(ds, Dataset):
            raise TypeError(f'Argument "source[{i}]" must be a pydicom Dataset, '
                            f'not {type(ds).__name__}.')
        missing = [keyword for keyword in _SOURCE_UIDS if not ds.get(keyword)]
        if missing:
            raise ValueError(f'Argument "source[{i}]" lacks {", ".join(missing)}.')
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID"):
        values = {str(ds[keyword].value) for ds in source}
        if len(values) > 1:
            raise ValueError(f'Argument "source" must hold one series; it has {len(values)} '
                             f'values of {keyword}.')
    if len({str(ds.SOPInstanceUID) for ds in source}) != len(source):
        raise ValueError('Argument "source" holds an instance twice (same SOPInstanceUID).')
    return list(source)


def _checked_results(results: Sequence[LabelResult], *, n_images: int) -> list[LabelResult]:
    """The results in LABELS order, after checking each."""
    if isinstance(results, (str, bytes)) or not isinstance(results, Sequence):
        raise TypeError('Argument "results" must be a sequence of LabelResult.')
    if len(results) == 0:
        raise ValueError('Argument "results" must not be empty.')
    by_label: dict[str, LabelResult] = {}
    for i, result in enumerate(results):
        name = f"results[{i}]"
        if not isinstance(result, LabelResult):
            raise TypeError(f'Argument "{name}" must be a LabelResult, '
                            f'not {type(result).__name__}.')
        if result.label not in LABELS:
            raise ValueError(f'Argument "{name}.label" is {result.label!r}, not one of {LABELS}.')
        if result.label in by_label:
            raise ValueError(f'Argument "{name}.label" repeats {result.label!r}.')
        _check_unit_interval(result.probability, f"{name}.probability")
        _check_unit_interval(result.threshold, f"{name}.threshold")
        if not isinstance(result.present, bool):
            raise TypeError(f'Argument "{name}.present" must be a bool.')
        _check_key_slice(result.key_slice, f"{name}.key_slice", n_images)
        by_label[result.label] = result
    return [by_label[label] for label in LABELS if label in by_label]


def _check_unit_interval(value: object, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f'Argument "{name}" must be a real number, not {type(value).__name__}.')
    if not 0.0 <= float(value) <= 1.0:  # NaN fails too
        raise ValueError(f'Argument "{name}" is {value}, outside [0, 1].')


def _check_key_slice(value: object, name: str, n_images: int) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f'Argument "{name}" must be an int or None, not {type(value).__name__}.')
    if not 0 <= int(value) < n_images:
        raise ValueError(f'Argument "{name}" is {value}, outside the {n_images} source slices.')


def _check_algorithm(algorithm: AlgorithmInfo) -> None:
    if not isinstance(algorithm, AlgorithmInfo):
        raise TypeError(f'Argument "algorithm" must be an AlgorithmInfo, '
                        f'not {type(algorithm).__name__}.')
    for field in ("name", "version", "manufacturer"):
        value = getattr(algorithm, field)
        if not isinstance(value, str) or not value.strip():
            raise ValueError(f'Argument "algorithm.{field}" must be a non-empty string.')
    if not isinstance(algorithm.parameters, Mapping):
        raise TypeError('Argument "algorithm.parameters" must be a mapping of str to str.')
    for key, value in algorithm.parameters.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise TypeError(f'Argument "algorithm.parameters" must map str to str, '
                            f'not {key!r}: {value!r}.')

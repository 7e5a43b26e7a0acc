"""The triage SR: study membership, read-back, key slices, codes, and two validators (dciodvfy,
dsrdump) on the written file."""

from __future__ import annotations

import math
import re
import shutil
import subprocess
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any, cast

import numpy as np
import pydicom
import pytest
from highdicom.sr import (
    Comprehensive3DSR,
    DeviceObserverIdentifyingAttributes,
    MeasurementReport,
    MeasurementsAndQualitativeEvaluations,
    srread,
)
from highdicom.sr.utils import find_content_items
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sr._concepts_dict import concepts
from pydicom.sr.codedict import codes
from pydicom.uid import (
    Comprehensive3DSRStorage,
    CTImageStorage,
    ExplicitVRLittleEndian,
    generate_uid,
)

from ml.labels import LABELS
from node.triage.codes import ABSENT, LABEL_CONCEPTS, PRESENT, PRIVATE_SCHEME, PROBABILITY_UNIT
from node.triage.sr import (
    SERIES_DESCRIPTION,
    AlgorithmInfo,
    LabelResult,
    build_triage_sr,
    read_triage_sr,
)
from tests import peers

N_SLICES = 5
WHEN = datetime(2026, 11, 26, 14, 30, 5)
ALGORITHM = AlgorithmInfo(
    name="ichnet_seq",
    version="3f2a9c1d0b7e",
    parameters={"windows": "brain,subdural,bone", "input_size": "256"},
)
# (label, probability, present, key slice): awkward floats on purpose, to test the rounding
RESULTS = (
    ("any", 0.9731234567891234, True, 3),
    ("epidural", 0.012345678901234567, False, None),
    ("intraparenchymal", 0.88, True, 2),
    ("intraventricular", 0.1, False, None),
    ("subarachnoid", 0.5, True, 4),
    ("subdural", 0.0, False, None),
)


def _ct_slice(index: int, *, study_uid: str, series_uid: str, frame_uid: str) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.PatientName = "Müller^Jörg"
    ds.PatientID = "MRN-004711"
    ds.PatientBirthDate = "19581103"
    ds.PatientSex = "M"
    ds.StudyInstanceUID = study_uid
    ds.StudyDate = "20261126"
    ds.StudyTime = "141502"
    ds.AccessionNumber = "ACC20261126-17"
    ds.ReferringPhysicianName = "Ward^Emergency"
    ds.StudyID = "4711"
    ds.StudyDescription = "CT HEAD WO CONTRAST"
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = 2
    ds.SeriesDescription = "Head 5mm"
    ds.Modality = "CT"
    ds.BodyPartExamined = "HEAD"
    ds.Manufacturer = "Example CT"
    ds.FrameOfReferenceUID = frame_uid
    ds.PositionReferenceIndicator = ""
    ds.InstanceNumber = index + 1
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.ImagePositionPatient = [-115.0, -115.0, -40.0 + 5.0 * index]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.SliceThickness = 5.0
    ds.PixelSpacing = [0.45, 0.45]
    ds.Rows = ds.Columns = 16
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    ds.RescaleIntercept = -1024
    ds.RescaleSlope = 1
    ds.PixelData = np.full((16, 16), 1064, np.int16).tobytes()
    return ds


@pytest.fixture
def source(tmp_path: Path) -> list[Dataset]:
    """Headers of a 5-slice head CT, as the worker reads them: from files, without pixels."""
    uids = {"study_uid": generate_uid(), "series_uid": generate_uid(), "frame_uid": generate_uid()}
    headers: list[Dataset] = []
    for i in range(N_SLICES):
        path = tmp_path / f"ct{i}.dcm"
        _ct_slice(i, **uids).save_as(path, enforce_file_format=True)
        headers.append(pydicom.dcmread(path, stop_before_pixels=True))
    return headers


def _results() -> list[LabelResult]:
    return [LabelResult(label, p, present, 0.5, key) for label, p, present, key in RESULTS]


def _build(source: list[Dataset], **kwargs: Any) -> Comprehensive3DSR:
    return build_triage_sr(source, _results(), ALGORITHM, content_datetime=WHEN, **kwargs)


def _written(sr: Comprehensive3DSR, tmp_path: Path) -> Path:
    path = tmp_path / "sr.dcm"
    sr.save_as(path, enforce_file_format=True)
    return path


def _report(sr: Dataset | Path) -> MeasurementReport:
    report = (srread(sr) if isinstance(sr, Path) else Comprehensive3DSR.from_dataset(sr)).content
    assert isinstance(report, MeasurementReport)
    return report


def _group(path: Path) -> MeasurementsAndQualitativeEvaluations:
    groups = _report(path).get_image_measurement_groups()
    assert len(groups) == 1
    return groups[0]


# --- the document --------------------------------------------------------------------------------


def test_sr_joins_the_source_study_in_a_new_series(source: list[Dataset], tmp_path: Path) -> None:
    sr = pydicom.dcmread(_written(_build(source, series_number=9001, instance_number=3), tmp_path))
    ct = source[0]
    for keyword in ("StudyInstanceUID", "PatientName", "PatientID", "PatientBirthDate",
                    "PatientSex", "AccessionNumber", "StudyID", "StudyDate", "StudyTime",
                    "ReferringPhysicianName", "StudyDescription"):
        assert sr[keyword].value == ct[keyword].value, keyword
    assert sr.SeriesInstanceUID not in {ds.SeriesInstanceUID for ds in source}
    assert sr.SOPInstanceUID not in {ds.SOPInstanceUID for ds in source}
    assert sr.Modality == "SR"
    assert sr.SOPClassUID == Comprehensive3DSRStorage
    assert (sr.SeriesNumber, sr.InstanceNumber) == (9001, 3)
    assert sr.SeriesDescription == SERIES_DESCRIPTION
    assert sr.Manufacturer == ALGORITHM.manufacturer
    assert sr.ManufacturerModelName == ALGORITHM.name
    assert (sr.ContentDate, sr.ContentTime) == ("20261126", "143005")
    assert (sr.CompletionFlag, sr.VerificationFlag) == ("COMPLETE", "UNVERIFIED")


def test_evidence_lists_every_source_image_once(source: list[Dataset]) -> None:
    sr = _build(source)
    assert "PertinentOtherEvidenceSequence" not in sr
    [study] = sr.CurrentRequestedProcedureEvidenceSequence
    [series] = study.ReferencedSeriesSequence
    assert study.StudyInstanceUID == source[0].StudyInstanceUID
    assert series.SeriesInstanceUID == source[0].SeriesInstanceUID
    assert [(i.ReferencedSOPClassUID, i.ReferencedSOPInstanceUID)
            for i in series.ReferencedSOPSequence] == [
        (ds.SOPClassUID, ds.SOPInstanceUID) for ds in source]


def test_private_scheme_is_declared(source: list[Dataset]) -> None:
    [scheme] = _build(source).CodingSchemeIdentificationSequence
    assert scheme.CodingSchemeDesignator == PRIVATE_SCHEME
    assert scheme.CodingSchemeName
    assert scheme.CodingSchemeResponsibleOrganization


# --- the content ---------------------------------------------------------------------------------


def test_read_triage_sr_gives_back_every_label_exactly(source: list[Dataset],
                                                        tmp_path: Path) -> None:
    path = _written(_build(source), tmp_path)
    expected = {label: (round(p, 4), present) for label, p, present, _ in RESULTS}
    assert read_triage_sr(pydicom.dcmread(path)) == expected
    assert list(read_triage_sr(pydicom.dcmread(path))) == list(LABELS)


def test_highdicom_reads_the_same_values(source: list[Dataset], tmp_path: Path) -> None:
    group = _group(_written(_build(source), tmp_path))
    assert group.tracking_identifier == "ICH triage of the series"
    assert {image.referenced_sop_instance_uid for image in group.source_images} == {
        ds.SOPInstanceUID for ds in source}
    for label, probability, present, _ in RESULTS:
        concepts_ = LABEL_CONCEPTS[label]
        [measurement] = group.get_measurements(name=concepts_.probability)
        assert measurement.value == round(probability, 4)
        assert measurement.unit == PROBABILITY_UNIT
        [evaluation] = group.get_qualitative_evaluations(name=concepts_.finding)
        assert evaluation.value == (PRESENT if present else ABSENT)


def test_key_slice_references_its_image(source: list[Dataset], tmp_path: Path) -> None:
    group = _group(_written(_build(source), tmp_path))
    for label, _, _, key_slice in RESULTS:
        [measurement] = group.get_measurements(name=LABEL_CONCEPTS[label].probability)
        references = [(image.referenced_sop_class_uid, image.referenced_sop_instance_uid)
                      for image in measurement.referenced_images]
        if key_slice is None:
            assert references == []
        else:
            assert references == [(CTImageStorage, source[key_slice].SOPInstanceUID)]


def test_algorithm_identification_is_in_the_tree(source: list[Dataset],
                                                  tmp_path: Path) -> None:
    group = _group(_written(_build(source), tmp_path))

    def texts(name: Any) -> list[str]:
        return [item.value for item in find_content_items(group[0], name=name)]

    assert texts(codes.DCM.AlgorithmName) == [ALGORITHM.name]
    assert texts(codes.DCM.AlgorithmVersion) == [ALGORITHM.version]
    assert texts(codes.DCM.AlgorithmManufacturer) == [ALGORITHM.manufacturer]
    parameters = texts(codes.DCM.AlgorithmParameters)
    assert "windows=brain,subdural,bone" in parameters
    assert "input_size=256" in parameters
    assert [p for p in parameters if p.startswith("threshold.")] == [
        f"threshold.{label}=0.5" for label in LABELS]


def test_observer_is_the_node_as_device(source: list[Dataset], tmp_path: Path) -> None:
    device_uid = generate_uid()
    report = _report(_written(_build(source, device_uid=device_uid), tmp_path))
    [observer] = report.get_observer_contexts()
    assert observer.observer_type == codes.cid270.Device
    attributes = observer.observer_identifying_attributes
    assert isinstance(attributes, DeviceObserverIdentifyingAttributes)
    assert attributes.name == "ICH triage node"
    assert attributes.uid == device_uid
    assert attributes.manufacturer_name == ALGORITHM.manufacturer
    assert attributes.model_name == ALGORITHM.name


def test_a_newer_result_is_a_new_instance_with_the_same_tracking_uid(
        source: list[Dataset], tmp_path: Path) -> None:
    first, second = _build(source), _build(source)
    assert first.SOPInstanceUID != second.SOPInstanceUID
    assert first.SeriesInstanceUID != second.SeriesInstanceUID
    assert first.StudyInstanceUID == second.StudyInstanceUID
    uids = [_report(sr).get_image_measurement_groups()[0].tracking_uid
            for sr in (first, second)]
    assert uids[0] == uids[1]


def test_subset_of_labels_and_numpy_scalars(source: list[Dataset]) -> None:
    results = [LabelResult("subdural", np.float32(0.25), True, 0.5, np.int64(2)),  # type: ignore[arg-type]
               LabelResult("any", np.float64(0.75), True, 0.5, 2)]
    sr = build_triage_sr(source, results, ALGORITHM)
    assert read_triage_sr(sr) == {"any": (0.75, True), "subdural": (0.25, True)}


def test_source_without_optional_study_attributes(source: list[Dataset]) -> None:
    for ds in source:
        del ds.ReferringPhysicianName, ds.StudyID, ds.AccessionNumber
    sr = _build(source)
    assert (sr.ReferringPhysicianName, sr.StudyID, sr.AccessionNumber) == (None, None, None)
    assert sr.PatientID == source[0].PatientID
    assert "StudyID" not in source[0]


# --- the validators ------------------------------------------------------------------------------


def test_dciodvfy_finds_no_errors(source: list[Dataset], tmp_path: Path) -> None:
    if shutil.which("dciodvfy") is None:
        peers.missing_peer("dciodvfy (dicom3tools)")
    out = subprocess.run(["dciodvfy", str(_written(_build(source), tmp_path))],
                         capture_output=True, text=True, check=False)
    lines = (out.stdout + out.stderr).splitlines()
    assert "Comprehensive3DSR" in lines
    assert [line for line in lines if line.startswith("Error")] == []


def test_dsrdump_shows_the_tree(source: list[Dataset], tmp_path: Path) -> None:
    if shutil.which("dsrdump") is None:
        peers.missing_peer("dsrdump (DCMTK)")
    out = subprocess.run(["dsrdump", "+Pc", "+Pu", str(_written(_build(source), tmp_path))],
                         capture_output=True, encoding="latin-1", check=True)  # as the source
    dump = out.stdout
    assert 'CODE:(1386000,SCT,"Intracranial hemorrhage")=(52101004,SCT,"Present")' in dump
    assert 'CODE:(ICHT001,99ICHT,"Epidural hemorrhage")=(272519000,SCT,"Absent")' in dump
    assert 'NUM:(ICHT104,99ICHT,"Probability of subarachnoid hemorrhage")="0.5"' in dump
    assert 'TEXT:(111001,DCM,"Algorithm Name")="ichnet_seq"' in dump
    assert f'(CT image,"{source[3].SOPInstanceUID}")' in dump
    for label in LABELS[1:]:
        assert f'"{label.capitalize()} hemorrhage"' in dump


def test_dsrdump_shows_a_partial_report_with_its_notes_and_a_head_ct(
        source: list[Dataset], tmp_path: Path) -> None:
    if shutil.which("dsrdump") is None or shutil.which("dciodvfy") is None:
        peers.missing_peer("dsrdump (DCMTK) or dciodvfy (dicom3tools)")
    notes = ["4 of 5 slices used", "gap of 37.2 mm above slice 15 (about 5 slice(s) missing)"]
    path = _written(_build(source, complete=False, notes=notes), tmp_path)
    dump = subprocess.run(["dsrdump", "+Pc", "+Pu", "+Pl", str(path)], capture_output=True,
                          encoding="latin-1", check=True).stdout
    assert "Completion Flag     : PARTIAL\n                      provisional: 4 of 5" in dump
    for note in notes:
        assert f'TEXT:(121106,DCM,"Comment")="{note}"' in dump
    assert '(24725-4,LN,"Head CT")' in dump
    assert dump.count("threshold.any=") == 1 and "threshold.any=0.5" in dump
    assert "0.9731" in dump and "0.97312" not in dump  # four decimals, not fourteen
    sr = pydicom.dcmread(path)
    assert sr.CompletionFlag == "PARTIAL"
    assert sr.CompletionFlagDescription == "provisional: 4 of 5 slices used"
    out = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, check=False)
    lines = (out.stdout + out.stderr).splitlines()
    assert "Comprehensive3DSR" in lines
    assert [line for line in lines if line.startswith("Error")] == []


def test_the_sr_keeps_the_sources_character_set_and_name_bytes(source: list[Dataset],
                                                               tmp_path: Path) -> None:
    sr = pydicom.dcmread(_written(_build(source), tmp_path))
    raw = pydicom.dcmread(_written(_build(source), tmp_path), defer_size=None)
    assert sr.SpecificCharacterSet == source[0].SpecificCharacterSet == "ISO_IR 100"
    assert raw["PatientName"].value == source[0]["PatientName"].value
    assert SERIES_DESCRIPTION.isascii()


@pytest.mark.parametrize(("given", "written"), [
    ("ISO IR 192", "ISO_IR 192"), ("ISO_IR 100", "ISO_IR 100"), (None, None), ("", None),
    ("KLINGON", "ISO_IR 192")])
def test_the_srs_character_set_follows_the_source(source: list[Dataset], given: str | None,
                                                  written: str | None) -> None:
    for ds in source:
        if given is None:
            del ds.SpecificCharacterSet
            ds.PatientName = "Muller^Jorg"
        else:
            ds.SpecificCharacterSet = given
    assert _build(source).get("SpecificCharacterSet") == written


@pytest.mark.parametrize(("charset", "name"), [
    (["", "ISO 2022 IR 87"], "Yamada^Tarou=\u5c71\u7530^\u592a\u90ce"),
    ("GB18030", "\u5f20^\u4f1f"), ("ISO_IR 192", "\u5f20^\u4f1f")])
def test_names_in_other_character_sets_keep_their_bytes(tmp_path: Path, charset: Any,
                                                        name: str) -> None:
    uids = {"study_uid": generate_uid(), "series_uid": generate_uid(), "frame_uid": generate_uid()}
    source = []
    for i in range(N_SLICES):
        ds = _ct_slice(i, **uids)
        ds.SpecificCharacterSet, ds.PatientName = charset, name
        path = tmp_path / f"ct{i}.dcm"
        ds.save_as(path, enforce_file_format=True)
        source.append(pydicom.dcmread(path, stop_before_pixels=True))
    written = _written(_build(source), tmp_path)
    raw = pydicom.dcmread(written, stop_before_pixels=True).get_item("PatientName").value
    assert raw == pydicom.dcmread(tmp_path / "ct0.dcm").get_item("PatientName").value
    assert str(pydicom.dcmread(written).PatientName) == name


def test_multi_frame_sources_are_cited_by_frame(tmp_path: Path) -> None:
    uids = {"study_uid": generate_uid(), "series_uid": generate_uid(), "frame_uid": generate_uid()}
    enhanced = _ct_slice(0, **uids)
    enhanced.NumberOfFrames = 5
    results = [LabelResult("any", 0.9, True, 0.5, 0, key_frame=4),
               LabelResult("subdural", 0.1, False, 0.5, None)]
    sr = build_triage_sr([enhanced], results, ALGORITHM, frames={enhanced.SOPInstanceUID:
                                                                [2, 1, 3, 4]})
    group = _group(_written(sr, tmp_path))
    [image] = group.source_images
    assert list(image.referenced_frame_numbers) == [2, 1, 3, 4]
    [measurement] = group.get_measurements(name=LABEL_CONCEPTS["any"].probability)
    [key] = measurement.referenced_images
    assert list(key.referenced_frame_numbers) == [4]
    with pytest.raises(ValueError, match=r'"frames\['):
        build_triage_sr([enhanced], results, ALGORITHM, frames={enhanced.SOPInstanceUID: [6]})


# --- codes ---------------------------------------------------------------------------------------


def test_every_label_has_its_own_concepts() -> None:
    assert tuple(LABEL_CONCEPTS) == LABELS
    names = [code for c in LABEL_CONCEPTS.values() for code in (c.finding, c.probability)]
    assert len({(code.value, code.scheme_designator) for code in names}) == len(names)


def test_standard_codes_are_in_pydicoms_dictionary() -> None:
    """Only SNOMED codes that pydicom knows; everything else is in the declared private scheme."""
    sct = cast(dict[str, dict[str, Any]], concepts["SCT"])
    known_sct = {value for entry in sct.values() for value in entry}
    used = [code for c in LABEL_CONCEPTS.values() for code in (c.finding, c.probability)]
    used += [PRESENT, ABSENT]
    for code in used:
        assert code.scheme_designator in {"SCT", PRIVATE_SCHEME}, code
        if code.scheme_designator == "SCT":
            assert code.value in known_sct, code


# --- bad input -----------------------------------------------------------------------------------


def _result(**changes: Any) -> LabelResult:
    return replace(LabelResult("any", 0.9, True, 0.5, 0), **changes)


BAD_RESULTS = [
    ([], ValueError, "results"),
    ([_result(label="chronic")], ValueError, "results[0].label"),
    ([_result(), _result(probability=0.1)], ValueError, "results[1].label"),
    ([_result(probability=1.5)], ValueError, "results[0].probability"),
    ([_result(probability=-0.01)], ValueError, "results[0].probability"),
    ([_result(probability=math.nan)], ValueError, "results[0].probability"),
    ([_result(probability="0.9")], TypeError, "results[0].probability"),
    ([_result(threshold=2.0)], ValueError, "results[0].threshold"),
    ([_result(present=1)], TypeError, "results[0].present"),
    ([_result(key_slice=N_SLICES)], ValueError, "results[0].key_slice"),
    ([_result(key_slice=-1)], ValueError, "results[0].key_slice"),
    ([_result(key_slice=1.0)], TypeError, "results[0].key_slice"),
    ([_result(present=False)], ValueError, "results[0].key_slice"),
    ([_result(key_frame=0)], ValueError, "results[0].key_frame"),
    ([("any", 0.9, True, 0.5, 0)], TypeError, "results[0]"),
]


@pytest.mark.parametrize(("results", "error", "argument"), BAD_RESULTS)
def test_bad_results_are_named(source: list[Dataset], results: Any, error: type[Exception],
                               argument: str) -> None:
    with pytest.raises(error, match=re.escape(f'"{argument}"')):
        build_triage_sr(source, results, ALGORITHM)


def test_bad_source_is_named(source: list[Dataset]) -> None:
    results = [_result()]
    with pytest.raises(ValueError, match='"source"'):
        build_triage_sr([], results, ALGORITHM)
    with pytest.raises(TypeError, match='"source"'):
        build_triage_sr(source[0], results, ALGORITHM)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r'"source\[1\]"'):
        build_triage_sr([source[0], "ct1.dcm"], results, ALGORITHM)  # type: ignore[list-item]
    other_series = Dataset()
    other_series.update(source[1])
    other_series.SeriesInstanceUID = generate_uid()
    with pytest.raises(ValueError, match='"source" must hold one series'):
        build_triage_sr([source[0], other_series], results, ALGORITHM)
    with pytest.raises(ValueError, match='"source" holds an instance twice'):
        build_triage_sr([source[0], source[0]], results, ALGORITHM)
    del source[2].SOPInstanceUID
    with pytest.raises(ValueError, match=r'"source\[2\]" lacks SOPInstanceUID'):
        build_triage_sr(source, results, ALGORITHM)


def test_bad_algorithm_and_options_are_named(source: list[Dataset]) -> None:
    results = [_result()]
    with pytest.raises(TypeError, match='"algorithm"'):
        build_triage_sr(source, results, "ichnet_seq")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match='"algorithm.version"'):
        build_triage_sr(source, results, replace(ALGORITHM, version=" "))
    with pytest.raises(TypeError, match='"algorithm.parameters"'):
        build_triage_sr(source, results, replace(ALGORITHM, parameters={"size": 256}))  # type: ignore[dict-item]
    with pytest.raises(ValueError, match='"algorithm.parameters" has threshold.any=0.3'):
        build_triage_sr(source, results, replace(ALGORITHM, parameters={"threshold.any": "0.3"}))
    with pytest.raises(ValueError, match='"series_instance_uid"'):
        build_triage_sr(source, results, ALGORITHM,
                        series_instance_uid=source[0].SeriesInstanceUID)
    with pytest.raises(ValueError, match='"series_number"'):
        build_triage_sr(source, results, ALGORITHM, series_number=0)


def test_read_triage_sr_refuses_other_objects(source: list[Dataset]) -> None:
    with pytest.raises(ValueError, match='"ds" is not a Comprehensive 3D SR'):
        read_triage_sr(source[0])
    with pytest.raises(TypeError, match='"ds"'):
        read_triage_sr(b"DICM")  # type: ignore[arg-type]


def test_the_report_reads_as_text(source: list[Dataset], tmp_path: Path) -> None:
    """node.triage.sr_text: what the study page shows, from the file as stored."""
    from node.triage.sr_text import sr_text

    notes = ["4 of 5 slices used"]
    sr = pydicom.dcmread(_written(_build(source, complete=False, notes=notes), tmp_path))
    key = source[2].SOPInstanceUID  # intraparenchymal's key slice
    lines = sr_text(sr, {key: "slice 3 of 5"}).splitlines()
    assert lines[0] == "Imaging Measurement Report [PARTIAL, UNVERIFIED]"
    assert lines[1] == "  Completion: provisional: 4 of 5 slices used"
    i = lines.index("      Probability of intraparenchymal hemorrhage: 0.88")
    assert lines[i + 1] == f"        Source of Measurement: slice 3 of 5 ({key})"
    assert "      Probability of epidural hemorrhage: 0.0123" in lines
    assert "      Subarachnoid hemorrhage: Present" in lines
    assert "      Subdural hemorrhage: Absent" in lines
    assert "      Algorithm Version: 3f2a9c1d0b7e" in lines
    assert "      Source of Measurement: 5 images" in lines  # folded, not 5 UIDs
    assert "      Comment: 4 of 5 slices used" in lines
    assert str(sr.PatientName) not in "\n".join(lines)  # the header is not read
    frames = build_triage_sr(  # a multi-frame key image is cited with its frame
        [_multi_frame(source[0])], [LabelResult("any", 0.9, True, 0.5, 0, key_frame=4)],
        ALGORITHM, frames={source[0].SOPInstanceUID: [2, 1, 3, 4]})
    assert "frame 4" in sr_text(frames)
    with pytest.raises(ValueError, match="ds: not an SR"):
        sr_text(source[0])


def _multi_frame(ds: Dataset) -> Dataset:
    copy = Dataset(ds)
    copy.NumberOfFrames = 5
    return copy

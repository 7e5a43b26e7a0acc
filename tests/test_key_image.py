"""The key-image Secondary Capture: the patient and study of its slice, the warning and the
finding burnt in, the heat map over the slice, and dciodvfy finds no error in it."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import generate_uid

from ml.windowing import to_hounsfield
from node.triage.key_image import WARNING, build_key_image
from tests import peers
from tests.factories import ct_slice

SC_STORAGE = "1.2.840.10008.5.1.4.1.1.7"


def _key_image(tmp_path: Path) -> tuple[pydicom.Dataset, Path]:
    ref = ct_slice(study_uid="1.2.826.0.7", series_uid="1.2.826.0.7.1", index=3, size=128)
    hu = to_hounsfield(ref)[0]
    heat = np.zeros_like(hu)
    heat[40:80, 70:110] = 1.0  # the model looked here
    sc = build_key_image(ref, hu, heat, label="subdural", probability=0.93, model="abc123",
                         series_uid=generate_uid(), sop_uid=generate_uid(), instance_number=1,
                         manufacturer="ichtriage")
    path = tmp_path / "sc.dcm"
    sc.save_as(path, enforce_file_format=True)
    return ref, path


def test_the_key_image_shows_the_finding_and_the_heat(tmp_path: Path) -> None:
    ref, path = _key_image(tmp_path)
    sc = pydicom.dcmread(path)
    assert sc.SOPClassUID == SC_STORAGE and sc.Modality == "OT"
    assert (sc.StudyInstanceUID, sc.PatientID, sc.AccessionNumber) == (
        ref.StudyInstanceUID, ref.PatientID, ref.AccessionNumber)
    assert sc.BurnedInAnnotation == "YES" and WARNING in sc.ImageComments
    assert "not for diagnostic use" in sc.SeriesDescription
    pixels = sc.pixel_array
    assert pixels.shape == (128, 128, 3) and sc.PhotometricInterpretation == "RGB"
    hot, cold = pixels[60, 90], pixels[60, 20]
    assert hot[0] > hot[2] + 60  # red-yellow where the heat is
    assert cold[0] == cold[1] == cold[2]  # gray elsewhere
    bar = pixels[:15]  # the warning: light text on a black bar across the top
    assert (bar.max(axis=2) == 0).mean() > 0.5 and bar.max() > 150
    with pytest.raises(ValueError):
        build_key_image(ref, np.zeros((4, 4)), np.zeros((5, 5)), label="any", probability=0.5,
                        model="m", series_uid="1.2", sop_uid="1.3", instance_number=1,
                        manufacturer="x")


def test_dciodvfy_finds_no_errors(tmp_path: Path) -> None:
    if shutil.which("dciodvfy") is None:
        peers.missing_peer("dciodvfy (dicom3tools)")
    _, path = _key_image(tmp_path)
    out = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, check=False)
    lines = (out.stdout + out.stderr).splitlines()
    assert any("SC" in line or "SecondaryCapture" in line for line in lines), lines[:5]
    assert [line for line in lines if line.startswith("Error")] == []

"""Issue 12: series shapes scanners and routers really send, built on the project's phantoms
(`ichtriage admin phantoms --studies 2 --seed 9`: PHANTOM^5948 has an intraparenchymal bleed
on slices 17-19, PHANTOM^2529 none), sent by DCMTK storescu to a running node, one node for
all shapes; each test asserts what the worklist, the result rows and the SR say."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset

from ml.phantom import write_dataset
from node.triage.sr import read_triage_sr
from tests import peers
from tests.nodeproc import NodeProcess, running_node, wait_for
from tests.shapes import (
    add_localizer,
    add_repeat,
    by_position,
    enhanced_ct,
    interleave,
    restamp,
    set_patient_name,
)

pytestmark = pytest.mark.slow
SR_CLASS = "1.2.840.10008.5.1.4.1.1.88.34"
NAME = "\u5f20^\u4f1f"  # a Chinese name, family^given
LOGS: dict[str, str] = {}  # the node's log, once it has stopped


@dataclass(frozen=True)
class Outcome:
    entry: dict[str, Any]  # the study's worklist row (ichtriage worklist --json)
    series_status: str
    sr: Dataset
    sr_path: Path | None
    used: list[tuple[str, int]]  # (SOP Instance UID, frame) of each slice read, in order
    sent: list[str]  # SOP Instance UIDs sent, in position order where that applies
    sent_paths: list[Path]


def _phantoms(root: Path) -> dict[str, list[Path]]:
    write_dataset(root, studies=2, seed=9)
    found = {}
    for folder in root.glob("*/*"):
        paths = sorted(folder.glob("*.dcm"))
        found[str(dcmread(paths[0], stop_before_pixels=True).PatientName)] = by_position(paths)
    return found


def _shapes(root: Path) -> dict[str, list[Path]]:
    """Each shape in its own folder, as a study of its own."""
    phantoms = _phantoms(root / "phantoms")
    bleed, normal = phantoms["PHANTOM^5948"], phantoms["PHANTOM^2529"]

    def copy(name: str, paths: list[Path]) -> list[Path]:
        return restamp(paths, root / name, name)

    shapes = {"bleed": copy("bleed", bleed), "normal": copy("normal", normal)}
    shapes["localizer"] = copy("localizer", bleed)
    shapes["localizer"].insert(0, add_localizer(shapes["localizer"], root / "localizer"))
    two = shapes["two_localizers"] = copy("two_localizers", bleed)
    two[:0] = [add_localizer(two, root / "two_localizers", number=0)]
    two.append(add_localizer(two[1:], root / "two_localizers", number=99))
    for name, source in (("repeat_normal", normal), ("repeat_bleed", bleed)):
        paths = shapes[name] = copy(name, source)
        paths.append(add_repeat(paths, 9, root / name))
    shapes["interleaved"] = copy("interleaved", bleed)
    interleave(shapes["interleaved"])
    shuffled = [int(k) for k in "5 17 2 23 11 0 19 8 14 3 21 6 12 1 22 9 16 4 20 13 7 18 10 15"
                .split()]
    shapes["enhanced"] = [enhanced_ct(copy("enhanced_src", bleed), root / "enhanced",
                                      order=shuffled)]
    shapes["gap"] = copy("gap", [p for k, p in enumerate(bleed) if not 15 <= k <= 19])
    shapes["top_cut"] = copy("top_cut", normal[:19])
    shapes["grow"] = copy("grow", bleed)  # the first 12 slices now, the rest later
    shapes["gb2312"] = copy("gb2312", normal)  # row 5: GB2312 bytes, no character set
    set_patient_name(shapes["gb2312"], NAME, declared=None, encoding="gb2312")
    shapes["misspelt"] = copy("misspelt", normal)  # row 5: "ISO IR 192" for ISO_IR 192
    set_patient_name(shapes["misspelt"], NAME, declared="ISO_IR 192", encoding="utf-8",
                     written="ISO IR 192")
    return shapes


def _header(path: Path) -> Dataset:
    """A sent file's header; the misspelt character set is on purpose there."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Incorrect value for Specific Character Set")
        return dcmread(path, stop_before_pixels=True)


def _require_dcmtk() -> None:
    if not peers.have_dcmtk():
        peers.missing_peer("DCMTK storescu")


def _collect(node: NodeProcess, shapes: dict[str, list[Path]]) -> dict[str, Outcome]:
    out = subprocess.run([sys.executable, "-m", "node", "worklist", "--json", "--db-url",
                          node.db_url], capture_output=True, text=True, check=True).stdout
    entries = {e["StudyInstanceUID"]: e for e in json.loads(out)}
    outcomes = {}
    for name, paths in shapes.items():
        study = str(_header(paths[-1]).StudyInstanceUID)
        (status,) = node.query(
            "select s.status from series s join study t on t.id = s.study_pk "
            f"where t.study_uid = '{study}' and s.modality = 'CT'")[0]
        newest = ("(select max(r.id) from triage_result r join series s on s.id = r.series_pk "
                  f"join study t on t.id = s.study_pk where t.study_uid = '{study}')")
        srs = node.query("select i.file_path from instance i join triage_result r "
                         f"on r.sr_sop_uid = i.sop_uid where r.id = {newest}")
        used = node.query(
            "select i.sop_uid, p.frame from slice_prediction p "
            f"join instance i on i.id = p.instance_pk where p.result_pk = {newest} "
            "order by p.position")
        sr_path = node.data_dir / "data" / str(srs[0][0]) if srs else None
        sr = dcmread(sr_path) if sr_path is not None else Dataset()
        sent = [str(_header(p).SOPInstanceUID) for p in paths]
        outcomes[name] = Outcome(entries[study], str(status), sr, sr_path,
                                 [(str(u), int(str(f))) for u, f in used], sent, paths)
    return outcomes


@pytest.fixture(scope="module")
def triaged(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Outcome]]:
    _require_dcmtk()
    root = tmp_path_factory.mktemp("shapes")
    shapes = _shapes(root)
    with running_node(root / "node", workers=1) as node:
        for name, paths in shapes.items():
            first = paths[:12] if name == "grow" else paths
            sent = peers.run_storescu(first, node.port, aet="CT1", called_aet="ICHTRIAGE")
            assert sent.returncode == 0, sent.stderr
        decided = ("select count(*) from series where modality = 'CT' and status in "
                   "('done', 'failed', 'not_eligible')")
        wait_for(lambda: node.query(decided) == [(len(shapes),)], timeout=600,
                 what="every shape triaged")
        first_half = _collect(node, {"grow": shapes["grow"][:12]})["grow"]
        sent = peers.run_storescu(shapes["grow"][12:], node.port, aet="CT1",
                                  called_aet="ICHTRIAGE")  # row 7: the rest, another association
        assert sent.returncode == 0, sent.stderr
        wait_for(lambda: node.query("select count(*) from triage_result") == [(len(shapes) + 1,)]
                 and node.query(decided) == [(len(shapes),)], timeout=300,
                 what="the grown series triaged again")
        outcomes = {**_collect(node, shapes), "grow_first_half": first_half}
        node.stop()
        LOGS[str(root)] = node.log_text()
        yield outcomes


def _sr_sources(sr: Dataset) -> list[str]:
    [study] = sr.CurrentRequestedProcedureEvidenceSequence
    [series] = study.ReferencedSeriesSequence
    return [str(i.ReferencedSOPInstanceUID) for i in series.ReferencedSOPSequence]


def _dump(sr: Dataset, tmp_path: Path) -> str:
    path = tmp_path / "sr.dcm"
    sr.save_as(path, enforce_file_format=True)
    return subprocess.run([peers.dcmtk_tool("dsrdump"), "+Pl", str(path)],
                          capture_output=True, encoding="latin-1", check=True).stdout


def _calls(outcome: Outcome) -> dict[str, bool]:
    return {label: present for label, (_, present) in read_triage_sr(outcome.sr).items()}


def test_the_plain_phantoms_are_called_right(triaged: dict[str, Outcome]) -> None:
    bleed, normal = triaged["bleed"], triaged["normal"]
    assert _calls(bleed)["intraparenchymal"] and _calls(bleed)["any"]
    assert not _calls(bleed)["subarachnoid"]
    assert not any(_calls(normal).values()) and normal.entry["priority"] == "routine"
    assert [u for u, _ in bleed.used] == bleed.sent  # position order
    assert bleed.sr.CompletionFlag == normal.sr.CompletionFlag == "COMPLETE"


@pytest.mark.parametrize(("shape", "left_out"), [("localizer", 1), ("two_localizers", 2)])
def test_localizers_in_the_series_are_left_out_and_the_bleed_is_found(
        triaged: dict[str, Outcome], shape: str, left_out: int, tmp_path: Path) -> None:
    """Row 1: a scout in the bleed series made the whole study 'not eligible'."""
    outcome = triaged[shape]
    assert outcome.series_status == "done"
    assert outcome.entry["priority"] == "high" and _calls(outcome)["intraparenchymal"]
    note = f"{left_out} localizer image(s) left out"
    assert note in outcome.entry["reason"]
    axial = [uid for uid in outcome.sent if uid not in {u for u, _ in outcome.used}]
    assert len(axial) == left_out  # exactly the scouts were not read
    assert [u for u, _ in outcome.used] == _sr_sources(outcome.sr)
    assert outcome.sr.CompletionFlag == "COMPLETE"
    dump = _dump(outcome.sr, tmp_path)
    assert f'"Comment")="{note}"' in dump
    assert f'"Comment")="24 of {24 + left_out} images of the series read, inferior to superior' in dump


@pytest.mark.parametrize("shape", ["repeat_normal", "repeat_bleed"])
def test_a_re_acquired_slice_replaces_its_position_only(triaged: dict[str, Outcome],
                                                        shape: str) -> None:
    """Row 2: one duplicate position made the worker order the series by InstanceNumber."""
    outcome, plain = triaged[shape], triaged[shape.replace("repeat_", "")]
    repeat = outcome.sent[-1]
    expected = outcome.sent[:-1]
    expected[9] = repeat
    assert [u for u, _ in outcome.used] == expected
    assert "1 duplicate position image(s) left out" in outcome.entry["reason"]
    assert _calls(outcome) == _calls(plain)
    assert outcome.entry["priority"] == plain.entry["priority"]


def test_interleaved_acquisitions_are_read_in_position_order(
        triaged: dict[str, Outcome]) -> None:
    outcome = triaged["interleaved"]
    assert [u for u, _ in outcome.used] == outcome.sent
    assert _calls(outcome) == _calls(triaged["bleed"])


def test_enhanced_ct_frames_are_read_by_position_and_cited_by_number(
        triaged: dict[str, Outcome], tmp_path: Path) -> None:
    """Row 3: frames went to the model in stored order, and the SR cited no frame."""
    outcome = triaged["enhanced"]
    shuffled = [int(k) for k in "5 17 2 23 11 0 19 8 14 3 21 6 12 1 22 9 16 4 20 13 7 18 10 15"
                .split()]
    assert [f for _, f in outcome.used] == [shuffled.index(k) for k in range(24)]  # 0-based
    assert _calls(outcome) == _calls(triaged["bleed"])
    dump = _dump(outcome.sr, tmp_path)
    frames = ",".join(str(shuffled.index(k) + 1) for k in range(24))
    assert f'"Source of Measurement")=(CTe image,,{frames})' in dump  # analysed frames, in order
    # the bleed's key slice is cited by its frame: one of slices 17-19 (0-based 16-18)
    assert any(f"(CTe image,,{shuffled.index(k) + 1})" in dump for k in (16, 17, 18))
    assert dump.count("(CTe image,,") == 3  # the key slices of "any" and the bleed, the group


@pytest.mark.parametrize(("shape", "reason"), [("gap", "gap of"),
                                               ("top_cut", "head cut off below the vertex")])
def test_an_incomplete_volume_gets_no_confident_negative(triaged: dict[str, Outcome],
                                                         shape: str, reason: str) -> None:
    """Row 4: five missing slices gave 'done / routine', SR COMPLETE, all Absent."""
    outcome = triaged[shape]
    assert outcome.entry["priority"] in ("high", "incomplete")
    assert outcome.entry["complete"] is False and reason in outcome.entry["reason"]
    assert outcome.sr.CompletionFlag == "PARTIAL"
    assert outcome.sr.CompletionFlagDescription.startswith(f"provisional: {reason}")


def test_a_series_that_grows_gets_a_visibly_superseding_result(
        triaged: dict[str, Outcome]) -> None:
    """Row 7: an interim SR marked COMPLETE for 12 of 24 slices, the second naming nothing."""
    first, final = triaged["grow_first_half"], triaged["grow"]
    assert len(first.used) == 12 and first.sr.CompletionFlag == "PARTIAL"
    assert len(final.used) == 24 and final.sr.CompletionFlag == "COMPLETE"
    [study] = final.sr.PredecessorDocumentsSequence
    [series] = study.ReferencedSeriesSequence
    assert [i.ReferencedSOPInstanceUID for i in series.ReferencedSOPSequence] == [
        first.sr.SOPInstanceUID]
    assert final.entry["updated"] is True and final.entry["complete"] is True
    assert _calls(final) == _calls(triaged["bleed"]) and final.entry["priority"] == "high"


@pytest.mark.parametrize("shape", ["gb2312", "misspelt"])
def test_the_sr_carries_the_patient_name_byte_for_byte(triaged: dict[str, Outcome],
                                                       shape: str) -> None:
    """Row 5: the SR's PatientName bytes differed from the images'."""
    outcome = triaged[shape]
    assert outcome.sr_path is not None and outcome.series_status == "done"
    source = _header(triaged[shape].sent_paths[0])
    sr = dcmread(outcome.sr_path, stop_before_pixels=True)
    assert sr.get_item("PatientName").value == source.get_item("PatientName").value
    expected = {"gb2312": None, "misspelt": "ISO_IR 192"}[shape]
    assert sr.get("SpecificCharacterSet") == expected


def test_a_misspelt_character_set_is_said_once_per_series(triaged: dict[str, Outcome]) -> None:
    (log,) = LOGS.values()
    series = str(_header(triaged["misspelt"].sent_paths[0]).SeriesInstanceUID)
    said = [line for line in log.splitlines() if "Specific Character Set 'ISO IR 192'" in line]
    about = [line for line in said if f"series {series}:" in line]
    # once where it is received, once where it is read for triage; never per value
    assert len([line for line in about if "said once per series" in line]) == 1
    assert len([line for line in about if "while reading it" in line]) == 1
    assert len(about) == 2
    assert [line for line in said if " pydicom:" in line] == []


def test_dsrdump_and_dciodvfy_accept_the_reports(triaged: dict[str, Outcome],
                                                 tmp_path: Path) -> None:
    if shutil.which("dciodvfy") is None:
        peers.missing_peer("dciodvfy (dicom3tools)")
    for name in ("localizer", "enhanced", "gap", "grow"):
        path = tmp_path / f"{name}.dcm"
        triaged[name].sr.save_as(path, enforce_file_format=True)
        out = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True,
                             check=False)
        errors = [line for line in (out.stdout + out.stderr).splitlines()
                  if line.startswith("Error")]
        assert errors == [], name

"""Query/Retrieve of the node as a real process, with DCMTK findscu, movescu and getscu."""

from __future__ import annotations

import itertools
import json
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from sqlalchemy import create_engine, insert, select

from node.dicom import fastpath
from storage.models import Patient, Series, Study, TriageResult
from tests import factories, peers
from tests.nodeproc import NodeProcess, running_node

pytestmark = [pytest.mark.slow, peers.needs(peers.have_dcmtk(), "DCMTK")]

COMPREHENSIVE_SR = "1.2.840.10008.5.1.4.1.1.88.33"
# patient name, patient id, study date, slices
STUDIES = [("Chen^Wei", "P1", "20260105", 3), ("chen^li", "P2", "20260120", 2),
           ("O'Brien^Pat", "P4", "20251231", 2)]
_runs = itertools.count()


@dataclass
class QRNode:
    node: NodeProcess
    sink: Path  # what storescp received from C-MOVEs
    work: Path
    studies: dict[str, list[Dataset]]  # PatientID -> the study's slices

    def study_uid(self, patient_id: str) -> str:
        return str(self.studies[patient_id][0].StudyInstanceUID)


@pytest.fixture(scope="module", params=fastpath.PATHS)
def qr(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
       ) -> Iterator[QRNode]:
    """One node per receive path, holding STUDIES, with storescp as its move destination."""
    if not peers.have_dcmtk():
        peers.missing_peer("DCMTK")
    tmp = tmp_path_factory.mktemp(f"qr-{request.param}")
    with peers.storescp_server(tmp / "sink") as (aet, port), running_node(
            tmp / "node", "--receive-path", request.param,
            "--move-destination", f"{aet}@127.0.0.1:{port}",
            "--allow-query-ae", "VIEWER", "--allow-query-ae", "PACS",
            "--allow-store-ae", "CT1", "--allow-store-ae", "PACS") as node:
        studies = {}
        for name, pid, date, n in STUDIES:
            series = factories.ct_series(n, patient_name=name, patient_id=pid)
            for ds in series:
                ds.StudyDate = date
                ds.AccessionNumber = f"ACC-{pid}"
            factories.write_series(tmp / "in" / pid, series)
            studies[pid] = series
        report = _report(studies["P1"][0])  # a report in the first study, as the node's SR is
        report.save_as(tmp / "in" / "P1" / "report.dcm", enforce_file_format=True)
        studies["P1"] = [*studies["P1"], report]
        sent = peers.run_storescu(tmp / "in", node.port, aet="CT1", called_aet="ICHTRIAGE")
        assert sent.returncode == 0, sent.stderr
        yield QRNode(node, tmp / "sink", tmp / "work", studies)


def _report(image: Dataset) -> Dataset:
    """A small Comprehensive SR instance in `image`'s study."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = COMPREHENSIVE_SR
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = generate_uid()
    ds.SOPClassUID = COMPREHENSIVE_SR
    for keyword in ("StudyInstanceUID", "PatientName", "PatientID", "StudyDate",
                    "AccessionNumber"):
        setattr(ds, keyword, getattr(image, keyword))
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "SR"
    ds.SeriesNumber = 99
    ds.InstanceNumber = 1
    ds.ValueType = "CONTAINER"
    ds.ContinuityOfContent = "SEPARATE"
    return ds


def _run(qr: QRNode, tool: str, *args: str, keys: dict[str, str], aet: str = "VIEWER"
         ) -> tuple[subprocess.CompletedProcess[str], Path]:
    out = qr.work / f"{tool}-{next(_runs)}"
    out.mkdir(parents=True)
    cmd = [peers.dcmtk_tool(tool), "-v", "-aet", aet, "-aec", "ICHTRIAGE", "-to", "20", *args]
    if tool != "movescu":  # movescu takes one only with its own storage port
        cmd += ["-od", str(out)]
    for key, value in keys.items():
        cmd += ["-k", f"{key}={value}" if value is not None else key]
    cmd += ["127.0.0.1", str(qr.node.port)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120,
                          env=peers.nodelay_env(), check=False)
    return done, out


def findscu(qr: QRNode, model: str, level: str, keys: dict[str, str], *extra: str,
            aet: str = "VIEWER") -> list[Dataset]:
    """The pending responses, in the order they came (findscu -X writes rsp0001.dcm...)."""
    done, out = _run(qr, "findscu", model, "-X", *extra,
                     keys={"QueryRetrieveLevel": level, **keys}, aet=aet)
    assert done.returncode == 0, done.stderr
    return [dcmread(p) for p in sorted(out.glob("rsp*.dcm"))]


def _values(responses: list[Dataset], keyword: str) -> list[str]:
    return [str(r.get(keyword, "")) for r in responses]


def test_study_root_study_level_wildcards_ranges_and_counts(qr: QRNode) -> None:
    found = findscu(qr, "-S", "STUDY", {"PatientName": "CHEN*", "StudyInstanceUID": "",
                                        "PatientID": "", "NumberOfStudyRelatedInstances": "",
                                        "ModalitiesInStudy": "", "StudyDate": ""})
    assert sorted(_values(found, "PatientID")) == ["P1", "P2"]
    by_id = {r.PatientID: r for r in found}
    assert by_id["P1"].NumberOfStudyRelatedInstances == 4  # 3 slices and a report
    assert by_id["P1"].StudyInstanceUID == qr.study_uid("P1")
    assert by_id["P2"].ModalitiesInStudy == "CT"
    assert list(by_id["P1"].ModalitiesInStudy) == ["CT", "SR"]
    ranged = findscu(qr, "-S", "STUDY", {"StudyDate": "20260101-20260131", "PatientID": ""})
    assert sorted(_values(ranged, "PatientID")) == ["P1", "P2"]
    before = findscu(qr, "-S", "STUDY", {"StudyDate": "-20251231", "PatientID": ""})
    assert _values(before, "PatientID") == ["P4"]
    one = findscu(qr, "-S", "STUDY", {"PatientID": "P?", "AccessionNumber": "ACC-P4",
                                      "StudyInstanceUID": ""})
    assert _values(one, "StudyInstanceUID") == [qr.study_uid("P4")]


def test_patient_root_every_level(qr: QRNode) -> None:
    patients = findscu(qr, "-P", "PATIENT", {"PatientID": "", "PatientName": "",
                                             "NumberOfPatientRelatedInstances": ""})
    assert {r.PatientID: r.NumberOfPatientRelatedInstances for r in patients} == {
        "P1": 4, "P2": 2, "P4": 2}
    studies = findscu(qr, "-P", "STUDY", {"PatientID": "P2", "StudyInstanceUID": ""})
    assert _values(studies, "StudyInstanceUID") == [qr.study_uid("P2")]
    series = findscu(qr, "-P", "SERIES", {"PatientID": "P1", "StudyInstanceUID": qr.study_uid("P1"),
                                          "SeriesInstanceUID": "", "Modality": "",
                                          "NumberOfSeriesRelatedInstances": ""})
    assert [(r.Modality, r.NumberOfSeriesRelatedInstances) for r in series] == [("CT", 3),
                                                                                ("SR", 1)]
    first = qr.studies["P1"][0]
    images = findscu(qr, "-P", "IMAGE", {
        "PatientID": "P1", "StudyInstanceUID": first.StudyInstanceUID,
        "SeriesInstanceUID": first.SeriesInstanceUID, "SOPInstanceUID": "",
        "InstanceNumber": ""})
    assert _values(images, "SOPInstanceUID") == [str(d.SOPInstanceUID)
                                                 for d in qr.studies["P1"][:3]]


def test_study_root_series_and_image_levels(qr: QRNode) -> None:
    series = findscu(qr, "-S", "SERIES", {"StudyInstanceUID": qr.study_uid("P4"),
                                          "SeriesInstanceUID": "", "SeriesNumber": ""})
    assert _values(series, "SeriesInstanceUID") == [str(qr.studies["P4"][0].SeriesInstanceUID)]
    images = findscu(qr, "-S", "IMAGE", {"StudyInstanceUID": qr.study_uid("P4"),
                                         "SeriesInstanceUID": "", "SOPInstanceUID": "",
                                         "SOPClassUID": ""})
    assert len(images) == 2 and {str(r.SOPClassUID) for r in images} == {
        "1.2.840.10008.5.1.4.1.1.2"}


def test_sql_looking_values_are_only_values(qr: QRNode) -> None:
    for value in ("' OR '1'='1", "x'; DROP TABLE study; --", "*' OR 1=1 --"):
        assert findscu(qr, "-S", "STUDY", {"PatientName": value, "PatientID": ""}) == []
    assert _values(findscu(qr, "-S", "STUDY", {"PatientName": "O'Brien*", "PatientID": ""}),
                   "PatientID") == ["P4"]
    assert len(findscu(qr, "-S", "STUDY", {"PatientID": ""})) == 3


def test_bad_identifiers_are_refused_with_their_status(qr: QRNode) -> None:
    done, _ = _run(qr, "findscu", "-S", keys={"QueryRetrieveLevel": "PATIENT", "PatientID": ""})
    assert "Final Find Response (Error: DataSetDoesNotMatchSOPClass)" in done.stderr, done.stderr
    done, _ = _run(qr, "findscu", "-S", keys={"QueryRetrieveLevel": "STUDY",
                                              "StudyInstanceUID": "1.2.*"})
    assert "Final Find Response (Failed: UnableToProcess)" in done.stderr, done.stderr


@pytest.mark.parametrize("path", fastpath.PATHS)
def test_cancel_after_the_first_response(path: str, tmp_path: Path) -> None:
    with running_node(tmp_path, "--receive-path", path, receivers=1) as node:
        engine = create_engine(node.db_url)
        try:
            with engine.begin() as conn:
                pk = conn.execute(insert(Patient).values(patient_key="BULK\\",
                                                         patient_id="BULK")
                                  .returning(Patient.id)).scalar_one()
                conn.execute(insert(Study), [{"study_uid": generate_uid(), "patient_pk": pk}
                                             for _ in range(5000)])
        finally:
            engine.dispose()
        qr = QRNode(node, tmp_path / "sink", tmp_path / "work", {})
        done, out = _run(qr, "findscu", "-S", "-X", "--cancel", "1",
                         keys={"QueryRetrieveLevel": "STUDY", "PatientID": "BULK"})
    assert done.returncode == 0, done.stderr
    assert "Sending Cancel Request" in done.stderr, done.stderr
    assert "Final Find Response (Cancel" in done.stderr, done.stderr
    assert 1 <= len(list(out.glob("rsp*.dcm"))) < 5000


def test_movescu_moves_a_study_into_storescp(qr: QRNode) -> None:
    before = set(qr.sink.iterdir())
    done, _ = _run(qr, "movescu", "-S", "-aem", "STORESCP",
                   keys={"QueryRetrieveLevel": "STUDY", "StudyInstanceUID": qr.study_uid("P1")})
    assert done.returncode == 0, done.stderr
    moved = [dcmread(p) for p in set(qr.sink.iterdir()) - before]
    assert sorted(str(d.SOPInstanceUID) for d in moved) == sorted(
        str(d.SOPInstanceUID) for d in qr.studies["P1"])  # the images and the report
    assert {str(d.file_meta.TransferSyntaxUID) for d in moved} == {"1.2.840.10008.1.2.1"}
    assert {d.Modality for d in moved} == {"CT", "SR"}


def test_movescu_to_an_unknown_destination_is_refused(qr: QRNode) -> None:
    done, _ = _run(qr, "movescu", "-S", "-aem", "NOWHERE",
                   keys={"QueryRetrieveLevel": "STUDY", "StudyInstanceUID": qr.study_uid("P1")})
    assert "Final Move Response (Refused: MoveDestinationUnknown)" in done.stderr, done.stderr


def test_getscu_gets_a_series(qr: QRNode) -> None:
    first = qr.studies["P2"][0]
    done, out = _run(qr, "getscu", "-S", keys={
        "QueryRetrieveLevel": "SERIES", "StudyInstanceUID": str(first.StudyInstanceUID),
        "SeriesInstanceUID": str(first.SeriesInstanceUID)})
    assert done.returncode == 0, done.stderr
    got = sorted(str(dcmread(p).SOPInstanceUID) for p in out.iterdir())
    assert got == sorted(str(d.SOPInstanceUID) for d in qr.studies["P2"])


def test_an_ae_allowed_to_store_only_cannot_query(qr: QRNode) -> None:
    done, _ = _run(qr, "findscu", "-S", keys={"QueryRetrieveLevel": "STUDY", "PatientID": ""},
                   aet="CT1")
    assert done.returncode != 0
    assert "no acceptable presentation contexts" in done.stderr.lower(), done.stderr


def test_study_level_answers_carry_the_triage_most_urgent_first(qr: QRNode) -> None:
    engine = create_engine(qr.node.db_url)
    try:
        with engine.begin() as conn:
            series_pk = conn.execute(select(Series.id).where(
                Series.series_uid == str(qr.studies["P2"][0].SeriesInstanceUID))).scalar_one()
            conn.execute(insert(TriageResult).values(
                series_pk=series_pk, model_name="m", model_version="1", probabilities="{}",
                calls=json.dumps({"any": True, "subdural": True}), positive=True,
                max_probability=0.93, complete=True))
    finally:
        engine.dispose()
    found = findscu(qr, "-S", "STUDY", {
        "PatientID": "", "(0011,0010)": "ICHTRIAGE 1.0", "(0011,1001)": "",
        "(0011,1002)": "", "(0011,1003)": ""})
    assert found[0].PatientID == "P2"
    triage = found[0].private_block(0x0011, "ICHTRIAGE 1.0")
    assert triage[0x01].value == "HIGH"
    assert float(triage[0x02].value) == pytest.approx(0.93)
    assert triage[0x03].value == "SUBDURAL"
    assert all(r.private_block(0x0011, "ICHTRIAGE 1.0")[0x01].value in ("", None)
               for r in found[1:])


def test_patient_names_and_ids_stay_out_of_the_log(qr: QRNode) -> None:
    findscu(qr, "-S", "STUDY", {"PatientName": "Chen^Wei", "PatientID": "", "AccessionNumber": ""})
    log = qr.node.log_text()
    assert "C-FIND" in log  # the queries are logged, by their keys' names
    for secret in ("Chen", "chen", "O'Brien", "ACC-P"):
        assert secret not in log


@pytest.mark.parametrize("path", fastpath.PATHS)
def test_orthanc_moves_a_study_from_the_node_to_itself(path: str, tmp_path: Path) -> None:
    """Orthanc, as a PACS would, asks the node (C-MOVE, through its REST API) to send a study
    to Orthanc, and receives every instance."""
    if not peers.have_orthanc():
        peers.missing_peer("Orthanc")
    orthanc_port = peers.free_port()
    series = factories.ct_series(5, patient_name="Moved^Study", patient_id="PM")
    factories.write_series(tmp_path / "in", series)
    with running_node(tmp_path / "node", "--receive-path", path,
                      "--move-destination", f"ORTHANC@127.0.0.1:{orthanc_port}") as node:
        sent = peers.run_storescu(tmp_path / "in", node.port, aet="CT1", called_aet="ICHTRIAGE")
        assert sent.returncode == 0, sent.stderr
        with peers.orthanc_server(tmp_path, dicom_port=orthanc_port, known_modalities={
                "node": ("ICHTRIAGE", "127.0.0.1", node.port)}) as orthanc:
            assert orthanc.sop_instance_uids() == set()
            orthanc.rest("/modalities/node/move", method="POST", timeout=60.0, body={
                "Level": "Study", "TargetAet": "ORTHANC",
                "Resources": [{"StudyInstanceUID": str(series[0].StudyInstanceUID)}]})
            assert orthanc.sop_instance_uids() == {str(d.SOPInstanceUID) for d in series}

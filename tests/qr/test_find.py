"""The Query/Retrieve SCP's C-FIND in process, on both receive paths, with pynetdicom as the
SCU: one test per outcome of the handler contract (PS3.4 C.4.1)."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import CTImageStorage
from sqlalchemy import Engine, insert

from node.config import Settings
from node.dicom import fastpath
from node.dicom.ae import (
    STUDY_ROOT_FIND,
    build_ae,
)
from node.dicom.qr_identifiers import PRIVATE_CREATOR, TRIAGE_GROUP
from node.dicom.qr_scp import QueryHandlers
from storage.db import make_engine
from storage.files import FileStore
from storage.models import Patient, Study
from tests.factories import ct_series
from tests.peers import LOOPBACK
from tests.qr.support import (
    NODE,
    Node,
    _counted_runs,
    _find,
    _scu,
    _store,
    _store_and_find_all,
    _study_identifier,
)
from tests.scp import LimitedServer, stop_server

STUDIES = 20_000  # a cancelled answer: long enough to be still streaming when the cancel comes


def test_find_returns_the_index_with_counts_and_unsupported_keys_empty(node: Node) -> None:
    series = _store(node, 3, patient_name="Doe^Jane", patient_id="PID-7")
    identifier = _study_identifier(PatientName="doe*", NumberOfStudyRelatedInstances="",
                                   ModalitiesInStudy="", OtherPatientIDs="", PatientID="")
    block = identifier.private_block(TRIAGE_GROUP, PRIVATE_CREATOR, create=True)
    block.add_new(0x01, "CS", "")
    responses = _find(node, identifier)
    assert [s for s, _ in responses] == [0xFF00, 0x0000]
    found = responses[0][1]
    assert found is not None
    assert found.StudyInstanceUID == series[0].StudyInstanceUID
    assert found.NumberOfStudyRelatedInstances == 3
    assert found.ModalitiesInStudy == "CT"
    assert found.PatientID == "PID-7"
    assert "OtherPatientIDs" in found and found.OtherPatientIDs in ("", None)
    assert found.RetrieveAETitle == NODE
    priority = found.private_block(TRIAGE_GROUP, PRIVATE_CREATOR)[0x01]
    assert priority.value in ("", None)  # not triaged yet


@pytest.mark.parametrize(("keys", "code"), [
    ({"QueryRetrieveLevel": "PATIENT"}, 0xA900),  # no PATIENT level in Study Root
    ({"QueryRetrieveLevel": "FRAME"}, 0xA900),
    ({"QueryRetrieveLevel": "STUDY", "SeriesInstanceUID": ""}, 0xA900),  # key below level
    ({"QueryRetrieveLevel": "STUDY", "StudyInstanceUID": "1.2.*"}, 0xC000),
    ({"QueryRetrieveLevel": "STUDY", "StudyDate": "yesterday"}, 0xC000),
])
def test_bad_identifiers_get_their_status_and_the_node_keeps_serving(
        node: Node, keys: dict[str, str], code: int) -> None:
    identifier = Dataset()
    for keyword, value in keys.items():
        setattr(identifier, keyword, value)
    responses = _find(node, identifier)
    assert [s for s, _ in responses] == [code]
    assert [s for s, _ in _find(node, _study_identifier())][-1] == 0x0000


def test_cancel_stops_the_pending_responses(node: Node) -> None:
    with node.engine.begin() as conn:
        pk = conn.execute(insert(Patient).values(patient_key="X\\", patient_id="X")
                          .returning(Patient.id)).scalar_one()
        conn.execute(insert(Study), [{"study_uid": f"1.2.9.{i}", "patient_pk": pk}
                                     for i in range(STUDIES)])
    assoc = _scu().associate(LOOPBACK, node.port, ae_title=NODE)
    assert assoc.is_established
    statuses = []
    try:
        responses = assoc.send_c_find(_study_identifier(), STUDY_ROOT_FIND, msg_id=7)
        for n, (status, _ds) in enumerate(responses):
            statuses.append(int(status.Status))
            if n == 0:
                assoc.send_c_cancel(7, query_model=STUDY_ROOT_FIND)
    finally:
        assoc.release()
    assert statuses[-1] == 0xFE00
    assert len(statuses) < STUDIES


def test_permissions_to_store_and_to_query_are_apart(node: Node) -> None:
    series = _store(node, 1)  # SCU may do both
    viewer = _scu("VIEWER")  # may query, not store
    assoc = viewer.associate(LOOPBACK, node.port, ae_title=NODE)
    try:
        assert assoc.send_c_store(ct_series(1)[0]).Status == 0x0124
        [(status, _)] = [(s, d) for s, d in assoc.send_c_find(
            _study_identifier(StudyInstanceUID=series[0].StudyInstanceUID), STUDY_ROOT_FIND)
            if int(s.Status) == 0x0000]
        assert int(status.Status) == 0x0000
    finally:
        assoc.release()
    modality = _scu("MODALITY")  # neither: its Q/R contexts are rejected
    assoc = modality.associate(LOOPBACK, node.port, ae_title=NODE)
    try:
        accepted = {str(cx.abstract_syntax) for cx in assoc.accepted_contexts}
        assert STUDY_ROOT_FIND not in accepted and CTImageStorage in accepted
        assert assoc.send_c_store(ct_series(1)[0]).Status == 0x0124
    finally:
        assoc.release()


def test_a_database_failure_is_answered_as_such(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'not-migrated.db'}")  # no tables
    queries = QueryHandlers(engine, FileStore(tmp_path / "data"), ae_title=NODE)
    ae = build_ae(Settings(ae_title=NODE))
    server = ae.make_server((LOOPBACK, 0), evt_handlers=queries.bindings(),
                            server_class=LimitedServer,
                            request_handler=fastpath.request_handler("fast"))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        node = Node(server, engine)
        assert [s for s, _ in _find(node, _study_identifier())] == [0xC320]
        assert [s for s, _ in _find(node, _study_identifier())] == [0xC320]  # still serving
    finally:
        stop_server(server)
        engine.dispose()


def test_find_responses_go_in_runs_on_the_fast_path(node: Node,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    runs = _counted_runs(monkeypatch)
    _store_and_find_all(node)
    assert (sum(runs) > 0) == (node.path == "fast")


def test_a_small_peer_pdu_gets_responses_in_fragments(node: Node) -> None:
    series = _store(node, 1, patient_name="Doe^Jane", patient_id="PID-7")
    assoc = _scu().associate(LOOPBACK, node.port, ae_title=NODE, max_pdu=64)
    try:
        responses = [(int(s.Status), ds) for s, ds in assoc.send_c_find(
            _study_identifier(PatientName="", PatientID="", StudyDescription=""),
            STUDY_ROOT_FIND)]
    finally:
        assoc.release()
    assert [s for s, _ in responses] == [0xFF00, 0x0000]
    found = responses[0][1]
    assert found is not None and found.StudyInstanceUID == series[0].StudyInstanceUID
    assert (str(found.PatientName), found.PatientID) == ("Doe^Jane", "PID-7")


def test_find_and_cancel_on_both_databases(engine: Engine, tmp_path: Path) -> None:
    """The streamed answer (a server-side cursor on PostgreSQL) and a cancel that closes it
    part-way; the next query on the same pool still answers. The answer is long (20,000
    studies, seconds to send) so that the cancel, sent after the first response, always
    meets it still streaming."""
    with engine.begin() as conn:
        pk = conn.execute(insert(Patient).values(patient_key="X\\", patient_id="X")
                          .returning(Patient.id)).scalar_one()
        conn.execute(insert(Study), [{"study_uid": f"1.2.9.{i}", "patient_pk": pk}
                                     for i in range(STUDIES)])
    queries = QueryHandlers(engine, FileStore(tmp_path / "data"), ae_title=NODE)
    server = build_ae(Settings(ae_title=NODE)).make_server(
        (LOOPBACK, 0), evt_handlers=queries.bindings(), server_class=LimitedServer,
        request_handler=fastpath.request_handler("fast"))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        node = Node(server, engine)
        assoc = _scu().associate(LOOPBACK, node.port, ae_title=NODE)
        statuses = []
        try:
            for n, (status, _ds) in enumerate(assoc.send_c_find(
                    _study_identifier(), STUDY_ROOT_FIND, msg_id=3)):
                statuses.append(int(status.Status))
                if n == 0:
                    assoc.send_c_cancel(3, query_model=STUDY_ROOT_FIND)
        finally:
            assoc.release()
        assert statuses[-1] == 0xFE00 and len(statuses) < STUDIES
        found = _find(node, _study_identifier(StudyInstanceUID="1.2.9.7\\1.2.9.19999"))
        assert sorted(ds.StudyInstanceUID for s, ds in found if s == 0xFF00 and ds) == [
            "1.2.9.19999", "1.2.9.7"]
    finally:
        stop_server(server)


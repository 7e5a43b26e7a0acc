"""The Query/Retrieve SCP's C-MOVE and C-GET in process, on both receive paths, with
pynetdicom as the SCU and a pynetdicom storage SCP as the destination: one test per outcome
of the handler contract (PS3.4 C.4.2, C.4.3)."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import (
    CTImageStorage,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)
from pynetdicom import _config, build_role, evt
from pynetdicom.dsutils import split_dataset

from node.cli.main import build_parser, settings_from
from node.config import AllowedPeer, ConfigError, Destination, load_settings
from node.dicom.ae import (
    PATIENT_ROOT_MOVE,
    STUDY_ROOT_GET,
    STUDY_ROOT_MOVE,
)
from node.dicom.fastpath.association import StoredFile
from tests.peers import LOOPBACK
from tests.qr.support import (
    NODE,
    SINK_BYTES,
    SINK_RECEIVED,
    Node,
    _counted_runs,
    _find,
    _move,
    _scu,
    _store,
    _store_and_find_all,
    _study_identifier,
)


def test_move_sends_every_instance_of_the_study_with_counts(node: Node) -> None:
    series = _store(node, 4)
    SINK_RECEIVED.clear()
    assoc = _scu().associate(LOOPBACK, node.port, ae_title=NODE)
    try:
        identifier = Dataset()
        identifier.QueryRetrieveLevel = "STUDY"
        identifier.StudyInstanceUID = series[0].StudyInstanceUID
        responses = [(int(s.Status), s) for s, _ in
                     assoc.send_c_move(identifier, "SINK", STUDY_ROOT_MOVE)]
    finally:
        assoc.release()
    _assert_pending_then(responses, 4, 0x0000, node.path)
    assert responses[-1][1].NumberOfCompletedSuboperations == 4
    assert responses[0][1].NumberOfRemainingSuboperations == 3
    assert sorted(d.SOPInstanceUID for d, _ in SINK_RECEIVED) == sorted(
        d.SOPInstanceUID for d in series)
    assert {syntax for _, syntax in SINK_RECEIVED} == {ExplicitVRLittleEndian}


# pynetdicom 3.0.4 leaves the socket of a refused sub-association for the collector (its own
# "FIXME" in QueryRetrieveServiceClass._move_scp); the node answers and serves on regardless.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.parametrize(("destination", "code"), [("NOWHERE", 0xA801), ("DOWN", 0xA801)])
def test_move_to_an_unknown_or_unreachable_destination_is_refused(
        node: Node, destination: str, code: int) -> None:
    series = _store(node, 1)
    assoc = _scu().associate(LOOPBACK, node.port, ae_title=NODE)
    try:
        identifier = Dataset()
        identifier.QueryRetrieveLevel = "STUDY"
        identifier.StudyInstanceUID = series[0].StudyInstanceUID
        statuses = [int(s.Status) for s, _ in
                    assoc.send_c_move(identifier, destination, STUDY_ROOT_MOVE)]
    finally:
        assoc.release()
    assert statuses == [code]


def test_get_returns_the_series_over_the_same_association(node: Node) -> None:
    series = _store(node, 2)
    received: list[str] = []

    def on_store(event: evt.Event) -> int:
        received.append(event.dataset.SOPInstanceUID)
        return 0x0000
    ae = _scu()
    assoc = ae.associate(LOOPBACK, node.port, ae_title=NODE,
                         ext_neg=[build_role(CTImageStorage, scp_role=True)],
                         evt_handlers=[(evt.EVT_C_STORE, on_store)])
    try:
        identifier = Dataset()
        identifier.QueryRetrieveLevel = "SERIES"
        identifier.SeriesInstanceUID = series[0].SeriesInstanceUID
        statuses = [(int(s.Status), s) for s, _ in assoc.send_c_get(identifier, STUDY_ROOT_GET)]
    finally:
        assoc.release()
    assert [s for s, _ in statuses] == [0xFF00, 0xFF00, 0x0000]
    assert statuses[-1][1].NumberOfCompletedSuboperations == 2
    assert sorted(received) == sorted(d.SOPInstanceUID for d in series)


@pytest.mark.parametrize("keys", [{"StudyInstanceUID": "1.2.*"}, {"AccessionNumber": "A1"}])
def test_a_move_that_names_no_study_is_refused_as_such(node: Node,
                                                       keys: dict[str, str]) -> None:
    """A wildcard, or no unique key: 0xA900 (the node used to fail inside pynetdicom)."""
    _store(node, 1)
    assoc = _scu().associate(LOOPBACK, node.port, ae_title=NODE)
    try:
        identifier = Dataset()
        identifier.QueryRetrieveLevel = "STUDY"
        for keyword, value in keys.items():
            setattr(identifier, keyword, value)
        statuses = [int(s.Status) for s, _ in
                    assoc.send_c_move(identifier, "SINK", STUDY_ROOT_MOVE)]
    finally:
        assoc.release()
    assert statuses == [0xA900]


def test_a_retrieve_must_name_what_it_retrieves(node: Node) -> None:
    _store(node, 1)
    assoc = _scu().associate(LOOPBACK, node.port, ae_title=NODE)
    try:
        identifier = Dataset()
        identifier.QueryRetrieveLevel = "STUDY"
        identifier.StudyInstanceUID = ""
        statuses = [int(s.Status) for s, _ in assoc.send_c_get(identifier, STUDY_ROOT_GET)]
    finally:
        assoc.release()
    assert statuses == [0xA900]


def test_patient_root_move_of_a_patient_and_get_of_one_image(node: Node) -> None:
    series = _store(node, 3, patient_id="PID-MOVE")
    SINK_RECEIVED.clear()
    ae = _scu()
    ae.add_requested_context(PATIENT_ROOT_MOVE)
    assoc = ae.associate(LOOPBACK, node.port, ae_title=NODE)
    try:
        identifier = Dataset()
        identifier.QueryRetrieveLevel = "PATIENT"
        identifier.PatientID = "PID-MOVE"
        final = [s for s, _ in assoc.send_c_move(identifier, "SINK", PATIENT_ROOT_MOVE)][-1]
    finally:
        assoc.release()
    assert (int(final.Status), final.NumberOfCompletedSuboperations) == (0x0000, 3)
    assert sorted(d.SOPInstanceUID for d, _ in SINK_RECEIVED) == sorted(
        d.SOPInstanceUID for d in series)

    received: list[str] = []

    def on_store(event: evt.Event) -> int:
        received.append(event.dataset.SOPInstanceUID)
        return 0x0000
    assoc = _scu().associate(LOOPBACK, node.port, ae_title=NODE,
                             ext_neg=[build_role(CTImageStorage, scp_role=True)],
                             evt_handlers=[(evt.EVT_C_STORE, on_store)])
    try:
        identifier = Dataset()
        identifier.QueryRetrieveLevel = "IMAGE"
        identifier.SeriesInstanceUID = series[1].SeriesInstanceUID
        identifier.SOPInstanceUID = series[1].SOPInstanceUID
        statuses = [int(s.Status) for s, _ in assoc.send_c_get(identifier, STUDY_ROOT_GET)]
    finally:
        assoc.release()
    assert statuses == [0xFF00, 0x0000]
    assert received == [series[1].SOPInstanceUID]


def test_move_destinations_come_from_flags_environment_and_toml(tmp_path: Path) -> None:
    flag = settings_from(build_parser().parse_args(
        ["serve", "--move-destination", "VIEWER@10.0.0.5:104",
         "--move-destination", "PACS@pacs.local:11112", "--allow-query-ae", "VIEWER"]))
    assert [str(d) for d in flag.move_destination] == ["VIEWER@10.0.0.5:104",
                                                       "PACS@pacs.local:11112"]
    assert flag.allow_query_ae == (AllowedPeer("VIEWER"),)
    env = load_settings(env={"ICHTRIAGE_MOVE_DESTINATION": "A@h:1,B@h:2",
                             "ICHTRIAGE_ALLOW_STORE_AE": "CT1@10.0.0.21"})
    assert [d.ae_title for d in env.move_destination] == ["A", "B"]
    assert env.allow_store_ae == (AllowedPeer("CT1", "10.0.0.21"),)
    toml = tmp_path / "node.toml"
    toml.write_text('move_destination = ["VIEWER@10.0.0.5:104"]\n')
    assert load_settings(config_file=toml, env={}).move_destination == (
        Destination("VIEWER", "10.0.0.5", 104),)
    with pytest.raises(ConfigError, match="move_destination"):
        load_settings(env={"ICHTRIAGE_MOVE_DESTINATION": "A@h:1,A@g:2"})
    with pytest.raises(ConfigError, match="AE@HOST:PORT"):
        load_settings(env={"ICHTRIAGE_MOVE_DESTINATION": "nowhere"})


def test_a_move_sends_each_file_in_its_own_transfer_syntax(node: Node) -> None:
    series = _store(node, 2, syntax=ImplicitVRLittleEndian)
    SINK_RECEIVED.clear()
    assoc = _scu().associate(LOOPBACK, node.port, ae_title=NODE)
    try:
        identifier = Dataset()
        identifier.QueryRetrieveLevel = "SERIES"
        identifier.SeriesInstanceUID = series[0].SeriesInstanceUID
        final = [s for s, _ in assoc.send_c_move(identifier, "SINK", STUDY_ROOT_MOVE)][-1]
    finally:
        assoc.release()
    assert int(final.Status) == 0x0000
    # stored as received (implicit VR), sent as stored, though the sink takes explicit too
    assert [syntax for _, syntax in SINK_RECEIVED] == [ImplicitVRLittleEndian] * 2


def test_a_moved_instance_is_its_stored_data_set(node: Node,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    reads: list[str] = []
    monkeypatch.setattr(StoredFile, "read", lambda self: reads.append(self.path))
    series = _store(node, 3)
    SINK_BYTES.clear()
    SINK_RECEIVED.clear()
    responses = _move(node, "SINK", SeriesInstanceUID=series[0].SeriesInstanceUID)
    _assert_pending_then([(int(s.Status), s) for s, _ in responses], 3, 0x0000, node.path)
    for data, (received, _syntax) in zip(SINK_BYTES, SINK_RECEIVED, strict=True):
        stored = dcmread(node.stored_file(received.SOPInstanceUID))
        assert received.PixelData == stored.PixelData
        if node.path == "fast":  # sent as stored: the file's bytes after its meta information
            _meta, offset = split_dataset(node.stored_file(received.SOPInstanceUID))
            assert data == node.stored_file(received.SOPInstanceUID).read_bytes()[offset:]
    assert reads == []  # never decoded: on the fast path sent as bytes, else no StoredFile


def test_a_destination_that_takes_another_syntax_gets_the_instance_converted(
        node: Node) -> None:
    series = _store(node, 2, syntax=ImplicitVRLittleEndian)
    SINK_RECEIVED.clear()
    responses = _move(node, "EXPLICIT", SeriesInstanceUID=series[0].SeriesInstanceUID)
    assert [int(s.Status) for s, _ in responses][-1] == 0x0000
    assert [syntax for _, syntax in SINK_RECEIVED] == [ExplicitVRLittleEndian] * 2
    assert [d.PixelData for d, _ in SINK_RECEIVED] == [d.PixelData for d in series]


def test_an_instance_that_cannot_be_read_fails_alone(node: Node) -> None:
    series = _store(node, 3)
    node.stored_file(series[1].SOPInstanceUID).unlink()
    SINK_RECEIVED.clear()
    final, failed = _move(node, "SINK", SeriesInstanceUID=series[0].SeriesInstanceUID)[-1]
    assert int(final.Status) == 0xB000  # warning: one or more sub-operations failed
    assert (final.NumberOfCompletedSuboperations, final.NumberOfFailedSuboperations) == (2, 1)
    assert failed is not None and failed.FailedSOPInstanceUIDList == series[1].SOPInstanceUID
    assert sorted(d.SOPInstanceUID for d, _ in SINK_RECEIVED) == sorted(
        d.SOPInstanceUID for d in (series[0], series[2]))
    assert [s for s, _ in _find(node, _study_identifier())][-1] == 0x0000  # still serving


def test_with_pynetdicom_log_handlers_the_general_way_answers_alike(
        node: Node, monkeypatch: pytest.MonkeyPatch) -> None:
    """pynetdicom's per-message handlers (bound when its logger debugs) see every message:
    the fast path then leaves finds and sub-operations to pynetdicom's general code."""
    monkeypatch.setattr(_config, "LOG_HANDLER_LEVEL", "standard")
    runs = _counted_runs(monkeypatch)
    series = _store_and_find_all(node)
    SINK_RECEIVED.clear()
    moved = _move(node, "SINK", SeriesInstanceUID=series[0].SeriesInstanceUID)
    assert [int(s.Status) for s, _ in moved] == [0xFF00, 0xFF00, 0x0000]
    assert [d.PixelData for d, _ in SINK_RECEIVED] == [d.PixelData for d in series]
    assert runs == []


def _assert_pending_then(responses: list[tuple[int, Dataset]], total: int, final: int,
                         path: str) -> None:
    """Pending responses, then `final`: one per sub-operation from pynetdicom's loop; from the
    node's (fast path) the first and at most one each PENDING_INTERVAL after it, each with
    counts that add up to `total` (PS3.4 C.4.2.3.1)."""
    assert [s for s, _ in responses[-1:]] == [final]
    pending = responses[:-1]
    assert {s for s, _ in pending} == {0xFF00}
    assert len(pending) == total if path == "stock" else 1 <= len(pending) <= total
    for _, rsp in pending:
        assert (rsp.NumberOfRemainingSuboperations + rsp.NumberOfCompletedSuboperations
                + rsp.NumberOfFailedSuboperations + rsp.NumberOfWarningSuboperations) == total


def test_move_contexts_offer_the_stored_syntax_alone_then_a_fallback() -> None:
    from node.dicom.qr_scp import _move_contexts

    jpeg = "1.2.840.10008.1.2.4.70"
    contexts = _move_contexts([(CTImageStorage, ImplicitVRLittleEndian),
                               (CTImageStorage, jpeg), (CTImageStorage, jpeg)])
    assert [list(map(str, cx.transfer_syntax)) for cx in contexts] == [
        [ImplicitVRLittleEndian], [ExplicitVRLittleEndian, ImplicitVRLittleEndian], [jpeg]]


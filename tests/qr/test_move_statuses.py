"""The node's C-MOVE loop against pynetdicom's for what the node's own handler seldom yields:
a handler that fails, raises, yields an unknown status, ends early with success, or yields
something that is not a data set, mid-move. The same scripted handler runs on a server of
each receive path; the final responses (status, counts, Failed SOP Instance UID List) must
be the same (PS3.4 C.4.2.1.5)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian
from pynetdicom import AE, build_context, evt

from node.config import Settings
from node.dicom import fastpath
from node.dicom.ae import STUDY_ROOT_MOVE, build_ae
from node.dicom.fastpath.association import StoredFile
from tests.factories import ct_series, write_series
from tests.peers import LOOPBACK
from tests.qr.support import NODE, _scu
from tests.scp import LimitedServer, stop_server

# what the handler yields after its first instance: (status, data set) pairs, or an exception
SCRIPTS: dict[str, list[Any]] = {
    "failure": [(0xA700, None)],
    "failure-with-list": [(0xC000, "own-list")],
    "exception": [RuntimeError("the index went away")],
    "unknown-status": [(0x1234, None)],
    "success-early": [(0x0000, None)],
    "not-a-dataset": [(0xFF00, "not a data set"), "next"],
    "warning": [(0xB000, None)],
}


def _handler(files: list[Path], script: list[Any], sink_port: int) -> Any:
    def on_move(event: evt.Event) -> Iterator[Any]:
        as_stored = fastpath.sends_stored_files(event.assoc.ae)

        def instance(path: Path) -> Dataset:
            if not as_stored:
                return dcmread(path)
            ds = dcmread(path, stop_before_pixels=True)
            return StoredFile(path, sop_class_uid=ds.SOPClassUID,
                              sop_instance_uid=ds.SOPInstanceUID,
                              transfer_syntax_uid=ds.file_meta.TransferSyntaxUID)
        yield LOOPBACK, sink_port, {"contexts": [build_context(CTImageStorage,
                                                               ExplicitVRLittleEndian)]}
        yield len(files)
        yield 0xFF00, instance(files[0])
        for step in script:
            if isinstance(step, Exception):
                raise step
            if step == "next":
                yield 0xFF00, instance(files[1])
                continue
            status, data = step
            if data == "own-list":
                data = Dataset()
                data.FailedSOPInstanceUIDList = ["1.2.3.4"]
            yield status, data
    return on_move


@pytest.fixture
def sink() -> Iterator[int]:
    ae = AE("SINK")
    ae.add_supported_context(CTImageStorage, ExplicitVRLittleEndian)
    server = ae.make_server((LOOPBACK, 0), evt_handlers=[(evt.EVT_C_STORE, lambda _e: 0x0000)])
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield int(server.server_address[1])
    finally:
        stop_server(server)


def _final(path: str, handler: Any) -> tuple[Any, ...]:
    ae = build_ae(Settings(ae_title=NODE, receive_path=path))
    server = ae.make_server((LOOPBACK, 0), evt_handlers=[(evt.EVT_C_MOVE, handler)],
                            server_class=LimitedServer,
                            request_handler=fastpath.request_handler(path))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        assoc = _scu().associate(LOOPBACK, int(server.server_address[1]), ae_title=NODE)
        assert assoc.is_established
        try:
            identifier = Dataset()
            identifier.QueryRetrieveLevel = "SERIES"
            identifier.SeriesInstanceUID = "1.2.3"
            responses = list(assoc.send_c_move(identifier, "SINK", STUDY_ROOT_MOVE))
        finally:
            assoc.release()
    finally:
        stop_server(server)
    status, failed = responses[-1]
    listed = None
    if failed is not None and "FailedSOPInstanceUIDList" in failed:
        value = failed.FailedSOPInstanceUIDList
        listed = [value] if isinstance(value, str) else list(value)
    return (int(status.Status), *(status.get(k) for k in (
        "NumberOfRemainingSuboperations", "NumberOfCompletedSuboperations",
        "NumberOfFailedSuboperations", "NumberOfWarningSuboperations")), listed)


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_a_scripted_move_ends_alike_on_both_paths(script: str, sink: int,
                                                  tmp_path: Path) -> None:
    files = write_series(tmp_path / "series", ct_series(3))
    handler = _handler(files, SCRIPTS[script], sink)
    fast, stock = (_final(path, handler) for path in fastpath.PATHS)
    assert fast == stock
    assert fast[2] >= 1  # the first instance went before the script's turn

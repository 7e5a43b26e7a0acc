"""In-process association servers on the node's receive paths, and a pynetdicom SCU."""

from __future__ import annotations

import socketserver
import threading
import time
from typing import Any

from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian
from pynetdicom import AE, evt
from pynetdicom.transport import ThreadedAssociationServer

from node.dicom import fastpath
from node.dicom.guard import ReadLimits
from tests.peers import LOOPBACK

VERIFICATION = "1.2.840.10008.1.1"


class LimitedServer(ThreadedAssociationServer):
    """A threaded association server with the node's read limits (as DispatchedServer)."""

    read_limits = ReadLimits(max_pdu=16384, max_message=1 << 20, request_timeout=1.0,
                             pdu_timeout=1.0)


def start_server(path: str, on_store: Any) -> ThreadedAssociationServer:
    ae = AE("NODE")
    ae.network_timeout = 1.0
    ae.acse_timeout = LimitedServer.read_limits.request_timeout  # as build_ae() sets it
    ae.maximum_pdu_size = LimitedServer.read_limits.max_pdu
    ae.add_supported_context(CTImageStorage, ExplicitVRLittleEndian)
    ae.add_supported_context(VERIFICATION)
    srv = ae.make_server((LOOPBACK, 0), evt_handlers=[(evt.EVT_C_STORE, on_store)],
                         server_class=LimitedServer,
                         request_handler=fastpath.request_handler(path))
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    return srv


def stop_server(srv: ThreadedAssociationServer) -> None:
    socketserver.TCPServer.shutdown(srv)  # make_server's servers are not the AE's to stop
    srv.server_close()


def second_refused(received: list[Any]) -> Any:
    """A store handler recording (association class, UID), answering 0xA700 to the 2nd."""
    def on_store(event: evt.Event) -> int:
        received.append((type(event.assoc).__name__, event.request.AffectedSOPInstanceUID))
        return 0x0000 if len(received) != 2 else 0xA700
    return on_store


def scu() -> AE:
    ae = AE("SCU")
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    ae.add_requested_context(VERIFICATION)
    return ae


def wait_idle(srv: ThreadedAssociationServer, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while srv.active_associations and time.monotonic() < deadline:
        time.sleep(0.02)
    assert srv.active_associations == []

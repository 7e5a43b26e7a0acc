"""A bare pynetdicom C-STORE SCP: the floor of the library the node is built on.

It writes each received data set to ``OUT/<SOP Instance UID>.dcm`` exactly as it came off the
wire (preamble, File Meta Information, then the encoded data set; no decoding, PS3.10 7.1)
and answers Success (0x0000, PS3.4 B.2.3). Nothing else: no database, no validation.

    python tests/benchmarks/bare_scp.py --port 11112 --out /tmp/received
"""

from __future__ import annotations

import argparse
import logging
import signal
import socket
import threading
from collections.abc import Callable
from pathlib import Path
from types import FrameType

from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dsutils import encode_file_meta
from pynetdicom.events import Event
from pynetdicom.transport import ThreadedAssociationServer

logger = logging.getLogger(__name__)

SUCCESS = 0x0000
_PREAMBLE = b"\x00" * 128 + b"DICM"


def make_handler(out_dir: Path) -> Callable[[Event], int]:
    """The EVT_C_STORE handler writing into ``out_dir``."""

    def handle_store(event: Event) -> int:
        request = event.request
        assert isinstance(request, C_STORE) and request.DataSet is not None
        with open(out_dir / f"{request.AffectedSOPInstanceUID}.dcm", "wb") as f:
            f.write(_PREAMBLE)
            f.write(encode_file_meta(event.file_meta))
            f.write(request.DataSet.getvalue())
        return SUCCESS

    return handle_store


def start(ae_title: str, host: str, port: int, out_dir: Path) -> ThreadedAssociationServer:
    """Start the SCP in a background thread; returns the server (call ``shutdown()``)."""
    ae = AE(ae_title)
    ae.maximum_pdu_size = 0  # unlimited
    for context in AllStoragePresentationContexts:
        assert context.abstract_syntax is not None
        ae.add_supported_context(context.abstract_syntax, ALL_TRANSFER_SYNTAXES)
    server = ae.start_server(
        (host, port), block=False, evt_handlers=[(evt.EVT_C_STORE, make_handler(out_dir))]
    )
    assert server is not None and server.socket is not None
    # pynetdicom does not read DCMTK's TCP_NODELAY variable; accepted sockets inherit this.
    server.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return server


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True, help="TCP port to listen on")
    parser.add_argument("--out", type=Path, required=True, help="folder for received files")
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to bind (default: %(default)s)"
    )
    parser.add_argument("--ae-title", default="BARESCP", help="AE title (default: %(default)s)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s")
    args.out.mkdir(parents=True, exist_ok=True)

    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    server = start(args.ae_title, args.host, args.port, args.out)
    print(f"bare pynetdicom SCP {args.ae_title} ready on {args.host}:{args.port}", flush=True)
    stop.wait()
    server.shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

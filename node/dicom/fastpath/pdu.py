"""P-DATA-TF PDUs (PS3.8 9.3.5, Annex E) written directly, and queued to the upper layer as bytes.

pynetdicom turns every fragment of a DIMSE message into a P_DATA primitive, queues it to the
upper layer thread, and there into a P_DATA_TF object, a state machine turn and an encode:
a 512 KB CT slice to a peer with 16 KB PDUs is 33 of each, and every C-FIND response one.
Here a whole message, or a run of C-FIND responses, becomes the bytes of its PDUs at once,
fragmented exactly as pynetdicom fragments it (one PDV item per PDU; tests/test_fastpath_pdu.py
compares the bytes), and is written to the socket in one call: by the thread that made it
where nothing else waits to be sent, else by the upper layer thread as one `EncodedData`
primitive (`node.dicom.fastpath.dul.WakingDUL.send_encoded`).
"""

from __future__ import annotations

import struct

from pynetdicom.pdu_primitives import P_DATA

_PDU_HEADER = struct.Struct(">BBL")  # PDU type 0x04, reserved, length
_PDV_HEADER = struct.Struct(">LBB")  # item length, presentation context ID, control header

COMMAND = 0x01  # message control header bits (PS3.8 E.2): a command fragment
LAST = 0x02  # the last fragment of the command or of the data set


class EncodedData(P_DATA):
    """P-DATA-TF PDUs already encoded (`encoded`, whole PDUs), for `WakingDUL` only: it
    writes them as they are. pynetdicom's own upper layer would send an empty PDU."""

    def __init__(self, encoded: bytes) -> None:
        super().__init__()
        self.encoded = encoded


def single_pdu(context_id: int, command: bytes, data: bytes | None) -> bytes:
    """A DIMSE message in one P-DATA-TF: its command set as one PDV item, then its data set
    (if any) as another (PS3.8 9.3.5, E.2); the caller checks it fits the peer's maximum."""
    pieces = [_PDU_HEADER.pack(0x04, 0, 6 + len(command) + (6 + len(data) if data is not None
                                                           else 0)),
              _PDV_HEADER.pack(len(command) + 2, context_id, COMMAND | LAST), command]
    if data is not None:
        pieces += [_PDV_HEADER.pack(len(data) + 2, context_id, LAST), data]
    return b"".join(pieces)


def message_pdus(context_id: int, command: bytes, data: bytes | memoryview | None,
                 max_pdu: int) -> list[bytes | memoryview]:
    """The P-DATA-TF PDUs of one DIMSE message, as pieces to join: its command set, then its
    data set (none when `data` is empty or None), each in fragments of at most max_pdu - 6
    bytes (`max_pdu`: the peer's maximum PDU length, 0 for unlimited; PS3.8 D.1).

    Raises ValueError for a max_pdu between 1 and 7 (no room for a fragment).
    """
    if 0 < max_pdu < 7:
        raise ValueError(f"a maximum PDU length of {max_pdu} leaves no room for data")
    pieces: list[bytes | memoryview] = []
    _fragments(pieces, context_id, memoryview(command), COMMAND, max_pdu)
    if data:
        _fragments(pieces, context_id, memoryview(data), 0, max_pdu)
    return pieces


def _fragments(pieces: list[bytes | memoryview], context_id: int, payload: memoryview,
               control: int, max_pdu: int) -> None:
    size = len(payload)
    step = max_pdu - 6 if max_pdu else max(size, 1)
    offset = 0
    while True:
        chunk = payload[offset:offset + step]
        offset += step
        last = offset >= size
        pieces.append(_PDU_HEADER.pack(0x04, 0, len(chunk) + 6)
                      + _PDV_HEADER.pack(len(chunk) + 2, context_id,
                                         control | (LAST if last else 0)))
        pieces.append(chunk)
        if last:
            return

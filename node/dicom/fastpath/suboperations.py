"""The sub-operation counts of a C-MOVE and its final response (PS3.4 C.4.2.1.4, C.4.2.1.5),
as pynetdicom 3.0.4 `QueryRetrieveServiceClass._move_scp` sets them on its response
primitive: `node.dicom.fastpath.move.MoveSCP` sends the same final responses."""

from __future__ import annotations

from io import BytesIO
from typing import Any, cast

from pydicom.dataset import Dataset
from pynetdicom._globals import STATUS_CANCEL, STATUS_FAILURE, STATUS_SUCCESS, STATUS_WARNING
from pynetdicom.dimse_primitives import C_MOVE
from pynetdicom.dsutils import encode
from pynetdicom.status import STORAGE_SERVICE_CLASS_STATUS

_UNKNOWN = (STATUS_FAILURE, "Unknown")


class Counts:
    """Sub-operations remaining, failed, warning and completed (PS3.4 C.4.2.1.4), and the
    SOP Instance UIDs of those that failed."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.remaining, self.failed, self.warning, self.completed = total, 0, 0, 0
        self.failed_uids: list[str] = []
        self.sent_any = False  # pynetdicom would have sent a pending response

    def add(self, store_status: int | None, uid: str | None) -> None:
        """Count one sub-operation by its C-STORE status (None: no valid response); an
        unknown status is a failure, as in pynetdicom."""
        kind = (STORAGE_SERVICE_CLASS_STATUS.get(store_status, _UNKNOWN)
                if store_status is not None else _UNKNOWN)[0]
        if kind == STATUS_FAILURE:
            self.failed += 1
            if uid is not None:
                self.failed_uids.append(uid)  # PS3.4 C.4.2.1.4.2
        elif kind == STATUS_WARNING:
            self.warning += 1
        elif kind == STATUS_SUCCESS:
            self.completed += 1
        self.remaining -= 1

    def set_on(self, rsp: C_MOVE) -> None:
        """The four counts on `rsp`, as pynetdicom's loop leaves them after its last
        pending response (a final response keeps that Remaining); none before one."""
        if self.sent_any:
            rsp.NumberOfRemainingSuboperations = self.remaining
            rsp.NumberOfFailedSuboperations = self.failed
            rsp.NumberOfWarningSuboperations = self.warning
            rsp.NumberOfCompletedSuboperations = self.completed

    def failed_list(self) -> Dataset:
        """The identifier of a final response: the Failed SOP Instance UID List."""
        dataset = Dataset()
        dataset.FailedSOPInstanceUIDList = self.failed_uids
        return dataset


def final_response(rsp: C_MOVE, kind: str, dataset: Any, counts: Counts, syntax: Any) -> None:
    """`rsp` made the final response to a cancel, failure, warning or success status
    (`kind`) the handler yielded with `dataset`; `syntax`: the request's transfer syntax."""
    counts.set_on(rsp)
    if kind in (STATUS_CANCEL, STATUS_FAILURE, STATUS_WARNING):
        if not isinstance(dataset, Dataset) or "FailedSOPInstanceUIDList" not in dataset:
            dataset = counts.failed_list()
        rsp.Identifier = BytesIO(_encoded(dataset, syntax))
        if kind == STATUS_CANCEL:
            rsp.NumberOfRemainingSuboperations = counts.remaining
            rsp.NumberOfFailedSuboperations = counts.failed
        else:  # what remains counts as failed
            rsp.NumberOfFailedSuboperations = counts.failed + counts.remaining
    else:
        if counts.failed or counts.warning:  # success yielded, with failures: a warning
            rsp.Identifier = BytesIO(_encoded(counts.failed_list(), syntax))
            rsp.Status = 0xB000
        else:
            rsp.Identifier = None
        rsp.NumberOfFailedSuboperations = counts.failed
    rsp.NumberOfWarningSuboperations = counts.warning
    rsp.NumberOfCompletedSuboperations = counts.completed


def last_response(rsp: C_MOVE, counts: Counts, syntax: Any) -> None:
    """`rsp` made the final response once the handler has no more: success, or warning
    (some sub-operations failed) or failure (all did) with the failed list."""
    counts.set_on(rsp)
    if not counts.failed and not counts.warning:
        rsp.Status = 0x0000
        rsp.Identifier = None
    else:
        rsp.Status = 0xA702 if counts.total == counts.failed else 0xB000
        rsp.Identifier = BytesIO(_encoded(counts.failed_list(), syntax))
    rsp.NumberOfFailedSuboperations = counts.failed
    rsp.NumberOfWarningSuboperations = counts.warning
    rsp.NumberOfCompletedSuboperations = counts.completed


def _encoded(dataset: Dataset, syntax: Any) -> bytes:
    return cast(bytes, encode(dataset, syntax.is_implicit_VR, syntax.is_little_endian,
                              syntax.is_deflated))

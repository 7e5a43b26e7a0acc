"""pynetdicom's association (PS3.8 7), its reactor waiting on its DIMSE message queue.

Follows pynetdicom 3.0.4 `Association._run_reactor` line by line apart from the wait; see
`node.dicom.fastpath.dul` for why. The same class serves the node's acceptors and the
associations it requests for C-MOVE sub-operations (`node.dicom.fastpath.ae`).

Two more differences, for Query/Retrieve:
- requests go to pynetdicom's service classes, except Query/Retrieve, which goes to
  `node.dicom.fastpath.service_class.QueryRetrieveService` (C-FIND responses in runs);
- `send_c_store` takes a `StoredFile` (what the node's C-MOVE and C-GET handlers yield): the
  file is sent as stored, its bytes after the File Meta Information straight into P-DATA-TF
  PDUs, when the peer accepted its SOP class in its own transfer syntax. pynetdicom would
  decode it with pydicom and encode it again (about 3 ms a CT slice), and queue each PDU to
  the upper layer thread one by one. Otherwise it is read and handed to pynetdicom, which
  converts it where it may (PS3.4 C.4.2.3.1 leaves that to the SCP).
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any, cast

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import UID
from pynetdicom import evt
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_STORE, DimseServiceType
from pynetdicom.dsutils import split_dataset
from pynetdicom.presentation import PresentationContext
from pynetdicom.service_class import QueryRetrieveServiceClass
from pynetdicom.sop_class import uid_to_service_class

from node.dicom.fastpath.dimse import StoreDIMSE, store_request_command
from node.dicom.fastpath.dul import TIMER_TICK, WakingDUL, wake_reactor
from node.dicom.fastpath.pdu import message_pdus
from node.dicom.fastpath.service_class import SENT_EVENTS, QueryRetrieveService
from node.dicom.meta import data_set_offset

logger = logging.getLogger(__name__)


class StoredFile(Dataset):
    """An instance to send as it is stored: its SOP Class and Instance UIDs, its transfer
    syntax and `path`, its DICOM file (PS3.10). Only `WakingAssociation` sends one; `read()`
    gives the whole data set for anything else.

    A Dataset because pynetdicom's C-MOVE and C-GET loops take nothing else, but one without
    elements: the UIDs are plain attributes (one per sub-operation, a pydicom data set of
    three elements took 80 us to make), read through properties, and it is always true
    (pynetdicom sends a pending data set only when it is)."""

    def __init__(self, path: str | Path, *, sop_class_uid: str, sop_instance_uid: str,
                 transfer_syntax_uid: str) -> None:
        super().__init__()
        object.__setattr__(self, "path", str(path))
        object.__setattr__(self, "_uids", (sop_class_uid, sop_instance_uid,
                                           transfer_syntax_uid))

    @property
    def SOPClassUID(self) -> UID:
        return UID(self._uids[0])

    @property
    def SOPInstanceUID(self) -> UID:
        return UID(self._uids[1])

    @property
    def transfer_syntax_uid(self) -> str:
        """The transfer syntax the file is stored in."""
        return str(self._uids[2])

    def __bool__(self) -> bool:
        return True

    def read(self) -> Dataset:
        """The data set, read with pydicom. Raises what dcmread raises."""
        return dcmread(self.path)


class WakingAssociation(Association):
    """An association whose reactor waits on its DIMSE message queue."""

    sends_stored_files = True  # send_c_store takes a StoredFile

    def __init__(self, ae: Any, mode: Any) -> None:
        super().__init__(ae, mode)
        self.dul = WakingDUL(self)
        self.dimse = StoreDIMSE(self)
        # held while the reactor takes a DIMSE message: see _pause_reactor
        self._taking = threading.Lock()
        # The timeout setters configure the providers: run them again for the new ones.
        self.acse_timeout = self.ae.acse_timeout
        self.dimse_timeout = self.ae.dimse_timeout
        self.network_timeout = self.ae.network_timeout

    def kill(self) -> None:
        self._kill = True
        wake_reactor(self)
        super().kill()

    def _run_reactor(self) -> None:
        # pynetdicom 3.0.4 Association._run_reactor, waiting on the message queue instead
        # of sleeping a fixed 1 ms.
        self._is_paused = False
        messages = self.dimse.msg_queue
        while not self._kill:
            with messages.not_empty:
                # (not while a send_c_store waits for the reactor to pause: it clears the
                # checkpoint before it wakes the reactor, so no wake-up is lost)
                if (not messages._qsize() and not self._kill and self._reactor_checkpoint.is_set()
                        and not self.dul.to_user_queue.qsize()):
                    messages.not_empty.wait(TIMER_TICK)  # the queue's own lock is held: _qsize
            self._is_paused = True
            self._reactor_checkpoint.wait()
            self._is_paused = False

            with self._taking:
                if not self._reactor_checkpoint.is_set():
                    continue  # paused since it passed the checkpoint: the message is the sender's
                context_id, msg = self.dimse.get_msg(block=False)
            if msg:
                self._serve_request(msg, cast(int, context_id))

            if self.is_established and self.acse.is_release_requested():
                self.acse.send_release(is_response=True)
                self.is_released = True
                self.is_established = False
                evt.trigger(self, evt.EVT_RELEASED, {})
                self.kill()
                return

            if self.acse.is_aborted():
                self.dul.receive_pdu(wait=False)
                self.is_aborted = True
                self.is_established = False
                evt.trigger(self, evt.EVT_ABORTED, {})
                self.kill()
                return

            if not self.dul.is_alive():
                self.kill()
                return

            if self.dul.idle_timer_expired():
                logger.warning("association with %s idle for %s s: ended",
                               (self.acceptor if self.is_requestor else self.requestor).address,
                               self.network_timeout)
                if self.network_timeout_response == "A-RELEASE":
                    self._is_paused = True
                    self._reactor_checkpoint.wait()
                    self.release()
                    self._is_paused = False
                else:
                    self.abort()
                self.kill()
                return

    def release(self) -> None:
        """pynetdicom's release. It first waits for the reactor to pause, which a waiting
        reactor would do only at its next timer tick (up to TIMER_TICK, at the end of every
        C-MOVE): woken, it pauses at once."""
        if self.is_established:
            self._reactor_checkpoint.clear()
            wake_reactor(self)
        super().release()

    def _serve_request(self, msg: DimseServiceType, context_id: int) -> None:
        # pynetdicom 3.0.4 Association._serve_request, with QueryRetrieveService in place of
        # pynetdicom's Query/Retrieve service class; any other request takes pynetdicom's way.
        class_uid = getattr(msg, "AffectedSOPClassUID", None)
        context = self._accepted_cx.get(context_id)
        if (self._sent_release or not msg.is_valid_request or class_uid is None
                or context is None or class_uid in self.acceptor.accepted_common_extended
                or uid_to_service_class(class_uid) is not QueryRetrieveServiceClass):
            super()._serve_request(msg, context_id)
            return
        try:
            self.dimse.cancel_req = {}
            self._is_paused = True
            QueryRetrieveService(self).SCP(cast(Any, msg), context)
            self._is_paused = False
            self.dimse.cancel_req = {}
        except Exception as exc:
            logger.exception(exc)
            self.abort()

    def send_c_store(self, dataset: str | Path | Dataset, msg_id: int = 1, priority: int = 2,
                     originator_aet: str | None = None, originator_id: int | None = None
                     ) -> Dataset:
        """pynetdicom's send_c_store; a `StoredFile` is sent as stored where the peer
        accepted its transfer syntax (see the module), else read and handed to pynetdicom.

        Raises what pynetdicom's raises, and OSError or pydicom's errors for a file that
        cannot be read."""
        if not isinstance(dataset, StoredFile):
            return super().send_c_store(dataset, msg_id, priority, originator_aet,
                                        originator_id)
        encoded = self.stored_message(dataset, msg_id, priority, originator_aet,
                                      originator_id)
        if encoded is None:
            return super().send_c_store(dataset.read(), msg_id, priority, originator_aet,
                                        originator_id)
        try:
            self.send_message(encoded)
            rsp = self.store_response()
        finally:
            self.resume_reactor()
        return Dataset() if rsp is None else self._check_received_status(rsp)

    def stored_message(self, stored: StoredFile, msg_id: int, priority: int = 2,
                       originator_aet: str | None = None, originator_id: int | None = None
                       ) -> bytes | None:
        """The P-DATA-TF PDUs of the C-STORE-RQ that sends `stored` as stored: its command
        set, then the file's bytes after its File Meta Information, fragmented for the peer;
        None when they cannot go so (no context accepted for its SOP class in its own
        transfer syntax, not established, or handlers watch what is sent).

        Raises OSError, or pydicom's errors, for a file that cannot be read."""
        context = self._stored_context(stored)
        if context is None or not self.is_established or any(
                self.get_handlers(event) for event in SENT_EVENTS):
            return None
        with open(stored.path, "rb") as fh:
            content = fh.read()
        offset = data_set_offset(content)
        if offset is None:
            _meta, offset = split_dataset(Path(stored.path))
        command = store_request_command(stored._uids[0], stored._uids[1], msg_id, priority,
                                        originator_aet, originator_id)
        return b"".join(message_pdus(cast(int, context.context_id), command,
                                     memoryview(content)[offset:],
                                     self.dimse.maximum_pdu_size))

    def send_message(self, encoded: bytes) -> None:
        """Send a request's PDUs (`stored_message`) with the reactor paused, as pynetdicom's
        send_* methods do: its response is the caller's, to take with `store_response`.
        The reactor stays paused until `resume_reactor()`: a C-MOVE sends every
        sub-operation so and resumes it once."""
        if self._reactor_checkpoint.is_set():
            self._pause_reactor()
        cast(WakingDUL, self.dul).send_encoded(encoded)

    def store_response(self) -> C_STORE | None:
        """The response to the request `send_message` sent, waiting up to the DIMSE
        timeout; None when none came (the association is then aborted, as pynetdicom does).
        """
        _cx_id, rsp = self.dimse.get_msg(block=True)
        if rsp is None:
            self._handle_no_response()
            return None
        return cast(C_STORE, rsp)

    def resume_reactor(self) -> None:
        """Let the reactor take DIMSE messages again (see `send_message`)."""
        self._reactor_checkpoint.set()

    def _stored_context(self, stored: StoredFile) -> PresentationContext | None:
        """The accepted context for sending `stored` as it is: its SOP class, its own
        transfer syntax, and this side in the SCU role."""
        syntax = stored.transfer_syntax_uid
        for cx in self.accepted_contexts:
            if (cx.abstract_syntax == stored.SOPClassUID and cx.as_scu
                    and cx.transfer_syntax and cx.transfer_syntax[0] == syntax):
                return cx
        return None

    def _pause_reactor(self) -> None:
        """Stop the reactor taking DIMSE messages (the response is this thread's), as
        pynetdicom's send_* methods do. pynetdicom waits until the reactor says it is paused,
        which it may say just before it goes on to take one more message; here the reactor
        takes a message only under `_taking` with the checkpoint still set, so once this has
        held `_taking` after clearing the checkpoint, the reactor takes nothing more."""
        self._reactor_checkpoint.clear()
        wake_reactor(self)
        with self._taking:
            pass

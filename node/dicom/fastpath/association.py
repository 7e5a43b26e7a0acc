"""pynetdicom's acceptor association (PS3.8 7), its reactor waiting on its DIMSE message queue.

Follows pynetdicom 3.0.4 `Association._run_reactor` line by line apart from the wait; see
`node.dicom.fastpath.dul` for why.
"""

from __future__ import annotations

import logging
from typing import Any, cast

from pynetdicom import evt
from pynetdicom.association import Association

from node.dicom.fastpath.dimse import StoreDIMSE
from node.dicom.fastpath.dul import TIMER_TICK, WakingDUL, wake_reactor

logger = logging.getLogger(__name__)


class WakingAssociation(Association):
    """An acceptor association whose reactor waits on its DIMSE message queue."""

    def __init__(self, ae: Any, mode: Any) -> None:
        super().__init__(ae, mode)
        self.dul = WakingDUL(self)
        self.dimse = StoreDIMSE(self)
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
                if not messages._qsize() and not self._kill and not self.dul.to_user_queue.qsize():
                    messages.not_empty.wait(TIMER_TICK)  # the queue's own lock is held: _qsize
            self._is_paused = True
            self._reactor_checkpoint.wait()
            self._is_paused = False

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
                logger.warning("association from %s idle for %s s: ended",
                               self.requestor.address, self.network_timeout)
                if self.network_timeout_response == "A-RELEASE":
                    self._is_paused = True
                    self._reactor_checkpoint.wait()
                    self.release()
                    self._is_paused = False
                else:
                    self.abort()
                self.kill()
                return

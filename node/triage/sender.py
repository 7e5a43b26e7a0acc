"""Sends the outbox by C-STORE (PS3.4 B) to the configured destinations, with retries."""

from __future__ import annotations

import logging
from collections import defaultdict
from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pynetdicom import AE
from pynetdicom.association import Association

from node.config import Destination
from storage.files import FileStore
from storage.outbox import Outbox, PendingDelivery

logger = logging.getLogger(__name__)

# Success and the warnings of PS3.4 Table B.2-1: the instance was stored.
STORED = {0x0000, 0xB000, 0xB006, 0xB007}


class DeliverySender:
    def __init__(self, outbox: Outbox, files: FileStore, *, ae_title: str,
                 timeout: float = 30.0) -> None:
        self.outbox = outbox
        self.files = files
        self.ae_title = ae_title
        self.timeout = timeout

    def run_once(self) -> int:
        """Send what is due, one association per destination; returns how many were sent."""
        by_destination: dict[str, list[PendingDelivery]] = defaultdict(list)
        for delivery in self.outbox.due():
            by_destination[delivery.destination].append(delivery)
        return sum(self._send(dest, items) for dest, items in by_destination.items())

    def _send(self, destination: str, items: list[PendingDelivery]) -> int:
        dest = Destination.parse(destination)
        datasets: dict[int, Dataset] = {}
        for item in items:
            path = self.files.path_of(item.file_path)
            try:
                datasets[item.id] = dcmread(path)
            except (OSError, InvalidDicomError) as exc:
                self.outbox.failed(item, f"cannot read {Path(item.file_path).name}: {exc}")
        if not datasets:
            return 0
        ae = AE(ae_title=self.ae_title)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = self.timeout
        for ds in datasets.values():
            ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
        assoc = ae.associate(dest.host, dest.port, ae_title=dest.ae_title)
        if not assoc.is_established:
            reason = "rejected" if assoc.is_rejected else "not reachable or aborted"
            for item in items:
                if item.id in datasets:
                    self._failed(item, f"association with {destination} {reason}")
            return 0
        sent = 0
        try:
            for item in items:
                if item.id in datasets:
                    sent += self._store(assoc, item, datasets[item.id], destination)
        finally:
            if assoc.is_established:
                assoc.release()
        return sent

    def _store(self, assoc: Association, item: PendingDelivery, ds: Dataset,
               destination: str) -> int:
        try:
            rsp = assoc.send_c_store(ds)
        except (ValueError, RuntimeError, OSError) as exc:
            self._failed(item, f"C-STORE to {destination} failed: {exc}")
            return 0
        status = getattr(rsp, "Status", None)
        if status in STORED:
            self.outbox.sent(item)
            logger.info("delivered %s to %s", item.sop_uid, destination)
            return 1
        text = "no response" if status is None else f"status 0x{status:04X}"
        self._failed(item, f"{destination} answered {text}")
        return 0

    def _failed(self, item: PendingDelivery, error: str) -> None:
        final = self.outbox.failed(item, error)
        logger.warning("delivery of %s (try %d): %s -> %s", item.sop_uid, item.attempts + 1,
                       error, final.value)

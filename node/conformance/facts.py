"""What the conformance statement says, read from the code that does it (PS3.2 Annex A).

Nothing here is a copy of a table kept elsewhere: the presentation contexts come from the AE
the receiving processes build (`node.dicom.ae.build_ae`), grouped by the service class
pynetdicom assigns each SOP class, so a service added there appears in the statement; the
limits are the settings' values; the statuses and rejection reasons are `node.dicom.status`;
the SCU side is read off the outbox sender and a report the SR builder writes.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Sequence
from dataclasses import dataclass

from pydicom.uid import UID
from pynetdicom import AE
from pynetdicom.presentation import PresentationContext
from pynetdicom.sop_class import uid_to_service_class

from node.config import Settings
from node.dicom.ae import build_ae
from node.triage.sender import STORED, DeliverySender
from storage.outbox import DELIVERY_RETRY
from storage.retry import RetryPolicy


@dataclass(frozen=True)
class SopClass:
    uid: str
    name: str
    transfer_syntaxes: tuple[str, ...]
    scp_role: bool | None  # SCP/SCU Role Selection (PS3.7 D.3.3.4), None: not negotiated
    scu_role: bool | None


@dataclass(frozen=True)
class Service:
    """One service class, e.g. "Storage", and its SOP classes in the order of their UIDs."""

    name: str
    sop_classes: tuple[SopClass, ...]

    @property
    def transfer_syntax_sets(self) -> list[tuple[str, ...]]:
        """The distinct lists of transfer syntaxes its SOP classes accept, first seen first."""
        return list(dict.fromkeys(s.transfer_syntaxes for s in self.sop_classes))


@dataclass(frozen=True)
class Implementation:
    class_uid: str
    version_name: str
    application_context: str = "1.2.840.10008.3.1.1.1"  # PS3.7 A.2.1, the only one defined


@dataclass(frozen=True)
class Initiator:
    """The node as Storage SCU: the results it sends (the outbox)."""

    sop_class: str
    transfer_syntax: str
    max_pdu: int
    timeout: float
    retry: RetryPolicy
    stored_statuses: tuple[int, ...]


def service_name(uid: str) -> str:
    """'Storage' for a storage SOP class: pynetdicom's service class, words split."""
    cls = uid_to_service_class(uid).__name__.removesuffix("ServiceClass")
    return re.sub(r"(?<=[a-z])(?=[A-Z])", " ", cls)


def accepted_services(settings: Settings) -> list[Service]:
    """What the node accepts as association acceptor, per service class (Verification and
    Storage today; whatever `build_ae` adds tomorrow)."""
    contexts: Sequence[PresentationContext] = build_ae(settings).supported_contexts
    grouped: dict[str, list[SopClass]] = {}
    for cx in contexts:
        uid = UID(str(cx.abstract_syntax))
        grouped.setdefault(service_name(uid), []).append(SopClass(
            uid=str(uid), name=uid.name, transfer_syntaxes=tuple(map(str, cx.transfer_syntax)),
            scp_role=cx.scp_role, scu_role=cx.scu_role))
    order = sorted(grouped, key=lambda name: (name != "Verification", name))
    return [Service(name, tuple(sorted(grouped[name], key=lambda s: _uid_key(s.uid))))
            for name in order]


def implementation(settings: Settings) -> Implementation:
    ae = build_ae(settings)
    return Implementation(str(ae.implementation_class_uid), ae.implementation_version_name or "")


def initiator(report_sop_class: str, report_transfer_syntax: str, *,
              retry: RetryPolicy = DELIVERY_RETRY) -> Initiator:
    """The Storage SCU side: one association per destination and batch, proposing each
    report's SOP class with the transfer syntax it is stored in (DeliverySender._send),
    retried by `retry` (the settings' `delivery_retry`)."""
    timeout = inspect.signature(DeliverySender).parameters["timeout"].default
    return Initiator(sop_class=report_sop_class, transfer_syntax=report_transfer_syntax,
                     max_pdu=AE().maximum_pdu_size, timeout=float(timeout), retry=retry,
                     stored_statuses=tuple(sorted(STORED)))


def retrieves(services: Sequence[Service]) -> list[SopClass]:
    """The accepted SOP classes after which the node itself sends instances (C-MOVE, C-GET)."""
    return [s for service in services for s in service.sop_classes
            if s.name.endswith(("- MOVE", "- GET"))]


def _uid_key(uid: str) -> tuple[int, ...]:
    return tuple(int(part) for part in uid.split("."))


def storage_scu_scope(services: Sequence[Service], initiator: Initiator) -> str:
    """Which storage SOP classes the node sends: the report, and with a retrieve service
    whatever it stores."""
    report = UID(initiator.sop_class).name
    if retrieves(services):
        return f"{report}; for C-MOVE and C-GET, any stored SOP class"
    return f"{report} only"

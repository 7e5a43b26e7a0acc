"""PS3.2 A.4 "Networking" of the conformance statement, as Markdown lines."""

from __future__ import annotations

from collections.abc import Sequence

from pydicom.uid import UID

from node.config import Settings
from node.conformance.facts import (
    Implementation,
    Initiator,
    Service,
    SopClass,
    retrieves,
    storage_scu_scope,
)
from node.dicom import status
from node.dicom.fastpath.move import PENDING_INTERVAL


def _yes(flag: bool) -> str:
    return "Yes" if flag else "No"


def _role(sop: SopClass) -> str:
    if sop.scp_role is None and sop.scu_role is None:
        return "SCP"
    return "/".join(r for r, on in (("SCU", sop.scu_role), ("SCP", sop.scp_role)) if on)


def _ts_rows(syntaxes: Sequence[str]) -> list[str]:
    rows = ["| Transfer Syntax | UID |", "| --- | --- |"]
    rows += [f"| {UID(ts).name} | `{ts}` |" for ts in syntaxes]
    return rows


def implementation_model(settings: Settings, services: Sequence[Service]) -> list[str]:
    ae = settings.ae_title
    accepted = ", ".join(s.name for s in services)
    return [
        "### Implementation Model", "",
        "#### Application Data Flow", "",
        "```",
        "  remote AE (CT scanner, PACS, router)          remote AE (PACS: the destinations)",
        "        │ C-ECHO, C-STORE (and any other          ▲",
        "        │ service listed in this statement)       │ C-STORE of the triage SR",
        "        ▼                                         │",
        f"  ┌──────────── {ae} AE (one AE, one port) ──────────────┐",
        "  │ receive ─▶ file store + SQL index ─▶ series settle ─▶ triage │",
        "  │                          worklist ◀─ SR ◀──────────────┘      │",
        "  └───────────────────────────────────────────────────────────────┘",
        "```", "",
        "#### Functional Definition of AEs", "",
        f"The node has one Application Entity, `{ae}` (setting `ae_title`). As association "
        f"acceptor it provides the services {accepted}. It keeps every instance it is sent, as "
        "received, and indexes it. A series of CT images that no new instance has joined for "
        "`settle_seconds` is complete; when it passes the eligibility rules (Annex) it is "
        "queued for triage. The triage worker writes a Comprehensive 3D SR, stores it in the "
        f"node's own store, and the same AE title, as association requestor, sends it by "
        "C-STORE to every configured destination.", "",
        "#### Sequencing of Real-World Activities", "",
        "A report exists only after a series has settled: an instance arriving after the report "
        "reopens the series, and the next report on it names the earlier one in the "
        "Predecessor Documents Sequence. Delivery to the destinations follows the report in "
        "its own time (the outbox); a destination that is down delays it, it does not lose it.",
        "",
    ]


def sop_class_table(settings: Settings, services: Sequence[Service],
                    initiator: Initiator) -> list[str]:
    rows = [f"#### SOP Classes of {settings.ae_title}", "",
            "| Service | SOP Classes | SCU | SCP |", "| --- | --- | --- | --- |"]
    for service in services:
        scu = any(s.uid == initiator.sop_class for s in service.sop_classes)
        what = (f"{len(service.sop_classes)} SOP classes (listed under Association Acceptance)"
                if len(service.sop_classes) > 1 else service.sop_classes[0].name)
        scu_text = f"Yes ({storage_scu_scope(services, initiator)})" if scu else "No"
        rows.append(f"| {service.name} | {what} | {scu_text} | Yes |")
    return [*rows, ""]


def association_policies(settings: Settings, impl: Implementation) -> list[str]:
    return [
        "#### Association Policies", "",
        "##### General", "",
        f"Application Context Name: `{impl.application_context}` (the DICOM application "
        f"context, PS3.7 A.2.1). Maximum PDU size received: {_pdu(settings.max_pdu)} "
        "(setting `max_pdu`), proposed in the A-ASSOCIATE-AC and enforced on every PDU before "
        "its body is read.", "",
        "##### Number of Associations", "",
        "| Limit | Value | Setting |", "| --- | --- | --- |",
        f"| associations accepted at once, node-wide | {settings.max_associations} "
        "| `max_associations` |",
        f"| associations accepted at once from one calling host "
        f"| {settings.max_associations_per_host} | `max_associations_per_host` |",
        "| associations initiated at once | 1 (the outbox serves destinations in turn) | |",
        "",
        "An association beyond a limit is rejected as transient (see Association Acceptance "
        "Policy), so the sender tries again later.", "",
        "##### Asynchronous Nature", "",
        "Not supported: the Asynchronous Operations Window is not negotiated; one operation "
        "at a time per association (PS3.7 D.3.3.3 default).", "",
        "##### Implementation Identifying Information", "",
        "| | |", "| --- | --- |",
        f"| Implementation Class UID | `{impl.class_uid}` |",
        f"| Implementation Version Name | `{impl.version_name}` |", "",
        "These are pynetdicom's; the file meta information of stored instances keeps the "
        "sender's own.", "",
    ]


def initiation_policy(settings: Settings, initiator: Initiator) -> list[str]:
    retry = initiator.retry
    stored = ", ".join(f"`0x{s:04X}`" for s in initiator.stored_statuses)
    return [
        "#### Association Initiation Policy", "",
        "##### Activity: Send Triage Result", "",
        f"For each report and each destination (setting `destinations`, `AE@HOST:PORT`), "
        "the outbox holds one delivery. Due deliveries are sent on one association per "
        f"destination, calling AE title `{settings.ae_title}`. No other association is "
        "initiated.", "",
        "| Abstract Syntax | UID | Transfer Syntax | Role | Extended Negotiation |",
        "| --- | --- | --- | --- | --- |",
        f"| {UID(initiator.sop_class).name} | `{initiator.sop_class}` | "
        f"{UID(initiator.transfer_syntax).name} (`{initiator.transfer_syntax}`), the syntax "
        "the report is stored in | SCU | None |",
        *_key_image_row(settings), "",
        f"Maximum PDU size received: {_pdu(initiator.max_pdu)}. ARTIM, DIMSE and network "
        f"timeouts: {initiator.timeout:g} s.", "",
        "##### SOP Specific Conformance: Storage SCU", "",
        f"A delivery answered {stored} (success, or a PS3.4 B.2.3 warning: the instance was "
        "stored) is done and never sent again. Any other status, a rejected or aborted "
        "association, or no answer is a failed try: the next waits "
        f"{retry.backoff_seconds:g} s, multiplied by {retry.backoff_factor:g} after each "
        f"further failure, at most {retry.max_backoff_seconds:g} s; after "
        f"{retry.max_attempts} tries the delivery is failed and stays in the outbox with its "
        "last error. Deliveries survive restarts of the node.", "",
    ]


def _key_image_row(settings: Settings) -> list[str]:
    """With `key_images`, each positive report is followed by a Secondary Capture key image
    per finding (node.triage.key_image), sent the same way."""
    if not settings.key_images:
        return []
    sc, syntax = UID("1.2.840.10008.5.1.4.1.1.7"), UID("1.2.840.10008.1.2.1")
    return [f"| {sc.name} | `{sc}` | {syntax.name} (`{syntax}`): the key image of each "
            "finding, after its report (setting `key_images`) | SCU | None |"]


def acceptance_policy(settings: Settings, services: Sequence[Service]) -> list[str]:
    rows = [
        "#### Association Acceptance Policy", "",
        "##### Activity: Receive Instances and Verification", "",
        "Any calling AE title is accepted unless `allow_ae` lists some (optionally bound to "
        "the calling host, `AE@HOST`). Presentation contexts are accepted for the abstract "
        "and transfer syntaxes below; the first transfer syntax the requestor proposes that "
        "is listed is chosen. SCP/SCU role selection is answered as pynetdicom does for "
        "contexts without role settings (the node takes the SCP role).", "",
        "Association rejections (A-ASSOCIATE-RJ, PS3.8 9.3.4):", "",
        "| Result | Source | Reason | When |", "| --- | --- | --- | --- |",
        f"| {status.REJECTED_PERMANENT} permanent | {status.SOURCE_SERVICE_USER} service user "
        f"| {status.REASON_CALLED_AE_NOT_RECOGNIZED} called AE title not recognized "
        f"| the called AE title is not `{settings.ae_title}` |",
        f"| {status.REJECTED_PERMANENT} permanent | {status.SOURCE_SERVICE_USER} service user "
        f"| {status.REASON_CALLING_AE_NOT_RECOGNIZED} calling AE title not recognized "
        "| `allow_ae` is set and does not list the calling AE title (from that host) |",
        f"| {status.REJECTED_TRANSIENT} transient | {status.SOURCE_PROVIDER_PRESENTATION} "
        f"service provider (presentation) | {status.REASON_LOCAL_LIMIT_EXCEEDED} local limit "
        "exceeded | more than `max_associations` open, or `max_associations_per_host` from "
        "the calling host |", "",
        "The connection is closed when no complete A-ASSOCIATE-RQ arrives within "
        f"{settings.association_request_timeout:g} s of connecting (`association_request_timeout`) "
        f"or a PDU takes longer than {settings.network_timeout:g} s to arrive; an "
        f"association idle for {settings.network_timeout:g} s (`network_timeout`) is "
        "aborted. An A-ABORT is sent, and the connection closed, when a PDU is longer than "
        "the limit for its type, a PDU other than an A-ASSOCIATE-RQ comes first, or one "
        "message's data set grows past "
        f"{settings.max_message_mb} MB (`max_message_mb`).", "",
    ]
    for service in services:
        rows += _accepted_contexts(service)
    rows += _store_scp_conformance(settings, services)
    return rows


def _accepted_contexts(service: Service) -> list[str]:
    rows = [f"##### Accepted Presentation Contexts: {service.name}", ""]
    sets = service.transfer_syntax_sets
    for n, syntaxes in enumerate(sets, 1):
        if len(sets) > 1:
            rows += [f"Transfer syntax set {service.name} {n}:", ""]
        rows += [*_ts_rows(syntaxes), ""]
    rows += ["| Abstract Syntax | UID | Role | Transfer Syntaxes |", "| --- | --- | --- | --- |"]
    for sop in service.sop_classes:
        which = (f"set {sets.index(sop.transfer_syntaxes) + 1}" if len(sets) > 1
                 else "all of the table above")
        rows.append(f"| {sop.name} | `{sop.uid}` | {_role(sop)} | {which} |")
    return [*rows, ""]


def _store_scp_conformance(settings: Settings, services: Sequence[Service]) -> list[str]:
    rows = [
        "##### SOP Specific Conformance: Storage SCP", "",
        "Level 2 (Full) storage: every instance is kept whatever its SOP class, byte for byte "
        "as received in its presentation context's transfer syntax (never decoded or "
        "transcoded), with File Meta Information added. Signatures are preserved. Success is "
        "answered only after the file is on disk (fsynced under its final name) and its index "
        "rows are committed. A second instance with a SOP Instance UID already stored is "
        "answered with success and discarded: the first copy is kept.", "",
        "| Status | Meaning | When |", "| --- | --- | --- |",
    ]
    when = {
        status.SUCCESS: "stored, or a duplicate of a stored instance",
        status.OUT_OF_RESOURCES: f"disk full or below `min_free_mb` ({settings.min_free_mb} "
                                 "MB) free, or the database unavailable: retry later",
        status.DATASET_DOES_NOT_MATCH: "SOP Class or Instance UID in the data set differs "
                                       "from the C-STORE request",
        status.CANNOT_UNDERSTAND: "a missing or invalid UID (not digits and dots, over 64 "
                                  "characters), an unparsable data set",
        status.PROCESSING_FAILURE: "a fault inside the node (logged with its traceback)",
    }
    rows += [f"| `0x{code:04X}` | {text} | {when.get(code, '')} |"
             for code, text in status.DESCRIPTIONS.items()]
    rows += ["", "##### SOP Specific Conformance: Verification SCP", "",
             "C-ECHO is answered with success (`0x0000`) on any accepted association.", ""]
    sent_by_node = retrieves(services)
    if sent_by_node:
        rows += ["##### Retrieve Sub-Operations", "",
                 "After accepting " + ", ".join(s.name for s in sent_by_node) + ", the AE "
                 "itself sends the matching instances as Storage SCU (C-MOVE: on a new "
                 "association to the move destination; C-GET: on the same association), "
                 "proposing each instance's SOP class in the transfer syntax it is stored in. "
                 "Pending C-MOVE responses (optional, PS3.4 C.4.2.3.1) carry the counts of "
                 "their moment: on the fast receive path (`receive_path`), one after the first "
                 "sub-operation, then at most one each "
                 f"{PENDING_INTERVAL * 1000:.0f} ms; on the stock path, and for C-GET, one "
                 "per sub-operation. The final response always has the exact counts and, "
                 "after failures, the Failed SOP Instance UID List.",
                 ""]
    return rows


def network_interfaces(settings: Settings) -> list[str]:
    return [
        "### Network Interfaces", "",
        "TCP/IP (PS3.8), IPv4 or IPv6 as the address in `bind` is, on one port (`port`); "
        "optionally TLS (see Security). The node opens no other DICOM port.", "",
    ]


def _pdu(value: int) -> str:
    return "unlimited" if value == 0 else f"{value} bytes"

"""The node's fast receive path: pynetdicom classes it shadows, for one pynetdicom version.

Each module is named after the pynetdicom module whose class it subclasses:
`dul` (DULServiceProvider: event-driven waits, P-DATA-TF straight to DIMSE, encoded PDUs
written as they are), `association` (Association: the reactor waits on its message queue;
Query/Retrieve requests to `service_class`; stored files sent as stored), `dimse`
(DIMSEServiceProvider: C-STORE, C-FIND, C-MOVE and C-GET messages without pydicom Datasets),
`pdu` (P-DATA-TF PDUs written directly), `service_class` (QueryRetrieveServiceClass: C-FIND
responses in runs; C-MOVE by `move`, the node's sub-operation loop, with `suboperations`, its
counts and final responses), `ae` (ApplicationEntity: its requested associations are the
node's), `transport` (RequestHandler).
Methods copied from pynetdicom are listed with a digest of the upstream source in
`upstream.COPIED`; a test fails when an upgrade changes one, so an upgrade is a deliberate act.

On any pynetdicom version other than UPSTREAM_VERSION, `request_handler("fast")` warns once
and gives the stock path: pynetdicom's own classes, reading through the node's guard.
"""

from __future__ import annotations

import logging
import threading

import pynetdicom
from pynetdicom.ae import ApplicationEntity
from pynetdicom.transport import RequestHandler

from node.dicom.guard import GuardedRequestHandler

logger = logging.getLogger(__name__)

UPSTREAM_VERSION = "3.0.4"
PATHS = ("fast", "stock")

_warned = threading.Event()


def available(version: str | None = None) -> bool:
    """Whether the fast path follows this pynetdicom (`version`, default the installed one)."""
    return (version or pynetdicom.__version__) == UPSTREAM_VERSION


def request_handler(path: str, *, version: str | None = None) -> type[RequestHandler]:
    """The request handler class for `path` ('fast' or 'stock'), both reading through
    `node.dicom.guard.GuardedSocket`. 'fast' on another pynetdicom version gives 'stock'
    with one warning.

    Raises ValueError for an unknown path.
    """
    if path not in PATHS:
        raise ValueError(f"receive path must be one of {PATHS}, got {path!r}")
    if path == "fast":
        if available(version):
            from node.dicom.fastpath.transport import WakingRequestHandler

            return WakingRequestHandler
        if not _warned.is_set():
            _warned.set()
            logger.warning("the fast receive path follows pynetdicom %s, not %s: using "
                           "pynetdicom's stock classes", UPSTREAM_VERSION,
                           version or pynetdicom.__version__)
    return GuardedRequestHandler


def application_entity(path: str, *, version: str | None = None) -> type[ApplicationEntity]:
    """The Application Entity class for `path`: on the fast path (and its pynetdicom
    version) one whose requested associations (C-MOVE sub-operations) are the node's
    `WakingAssociation`s; else pynetdicom's.

    Raises ValueError for an unknown path.
    """
    if request_handler(path, version=version) is GuardedRequestHandler:
        return ApplicationEntity
    from node.dicom.fastpath.ae import RequestingAE

    return RequestingAE


def sends_stored_files(assoc_or_ae: object) -> bool:
    """Whether `assoc_or_ae` (an association, for C-GET; an AE, whose own associations
    carry a C-MOVE's sub-operations) sends `association.StoredFile`s as stored."""
    return getattr(assoc_or_ae, "sends_stored_files", False) is True


def takes_encoded_identifiers(assoc: object) -> bool:
    """Whether C-FIND responses on `assoc` may be yielded as bytes already encoded
    (`service_class.answers_in_runs`): only on the fast path's associations."""
    if not getattr(assoc, "sends_stored_files", False):
        return False
    from node.dicom.fastpath.service_class import answers_in_runs

    return answers_in_runs(assoc)

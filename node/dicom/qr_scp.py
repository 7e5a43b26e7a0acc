"""Query/Retrieve SCP handlers: C-FIND, C-MOVE and C-GET over the index (PS3.4 Annex C).

Thin on purpose: the identifier is decoded here, matched by `storage.query` (which documents
the matching, the levels and the order of responses), and each row or file is handed to
pynetdicom's service class, which sends the responses, runs the C-STORE sub-operations and
builds the final status with its counts and failed-UID list.

The generator contract (pynetdicom's QR service class): C-FIND yields (status, identifier)
per match; C-GET yields the number of sub-operations first; C-MOVE yields the destination's
(address, port, {"contexts": ...}) first, then the number. On the fast receive path
(`node.dicom.fastpath`) a C-FIND identifier is yielded as its encoded bytes, and a retrieved
instance as a `StoredFile` (sent as stored, never decoded); on the stock path as Datasets. C-CANCEL is checked before each
row. Statuses (PS3.4 C.4.1.1.4, C.4.2.1.5, C.4.3.1.4): a key of the wrong level or an unknown
level 0xA900, a value its VR cannot match 0xC000, a database failure 0xC320, an unknown move
destination 0xA801 (pynetdicom answers it when the destination yielded is (None, None)).

The triage at STUDY level: private group 0011, private creator "ICHTRIAGE 1.0"
(`node.dicom.qr_identifiers.TRIAGE_TAGS`):
ask for (0011,xx01) TriagePriority (CS: HIGH, INCOMPLETE, ROUTINE; empty when not triaged),
(0011,xx02) TriageProbability (DS, the highest label probability of the result shown) and
(0011,xx03) TriageFindings (CS, 1-n: the hemorrhage subtypes called). Whether asked or not,
STUDY level answers come most urgent first (`storage.query_keys.TRIAGE_ORDER`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import build_context, evt
from pynetdicom.events import Event
from pynetdicom.presentation import PresentationContext
from sqlalchemy import Engine

from node.config import AllowedPeer, Destination
from node.dicom import fastpath, status
from node.dicom.ae import PATIENT_ROOT, STUDY_ROOT
from node.dicom.fastpath.association import StoredFile
from node.dicom.qr_identifiers import ResponseTemplate, identifier_keys, text
from node.dicom.store_scp import MALFORMED_DATA_SET
from storage.errors import DatabaseError
from storage.files import FileStore
from storage.matching import IdentifierError, MatchingValueError, QueryError
from storage.query import Query, count_instances, find, instances, presentations
from storage.query_keys import InformationModel, QueryLevel

logger = logging.getLogger(__name__)
T = TypeVar("T")

QR_SOP_CLASSES = {**{uid: InformationModel.PATIENT_ROOT for uid in PATIENT_ROOT},
                  **{uid: InformationModel.STUDY_ROOT for uid in STUDY_ROOT}}

UNIQUE_KEYS = {QueryLevel.PATIENT: "PatientID", QueryLevel.STUDY: "StudyInstanceUID",
               QueryLevel.SERIES: "SeriesInstanceUID", QueryLevel.IMAGE: "SOPInstanceUID"}
_NATIVE = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)
MAX_CONTEXTS = 128  # presentation contexts one association may propose (PS3.8 9.3.2.2)


class QueryHandlers:
    """C-FIND, C-MOVE and C-GET handlers of one receiving process.

    `allowed` are the calling AEs that may query and retrieve (empty: every AE the node
    accepts an association from); for any other AE the Q/R presentation contexts are
    rejected at negotiation. `destinations` are the known C-MOVE destinations by AE title.
    """

    def __init__(self, engine: Engine, files: FileStore, *, ae_title: str,
                 destinations: Sequence[Destination] = (),
                 allowed: Sequence[AllowedPeer] = ()) -> None:
        self.engine = engine
        self.files = files
        self.ae_title = ae_title
        self.destinations = {d.ae_title: d for d in destinations}
        self.allowed = tuple(allowed)

    def bindings(self) -> list[Any]:
        return [(evt.EVT_REQUESTED, self.on_requested), (evt.EVT_C_FIND, self.on_find),
                (evt.EVT_C_MOVE, self.on_move), (evt.EVT_C_GET, self.on_get)]

    def on_requested(self, event: Event) -> None:
        """Offer the Q/R SOP classes only to the AEs allowed to query (before negotiation)."""
        assoc = event.assoc
        primitive = assoc.requestor.primitive
        if not self.allowed or primitive is None or assoc.is_rejected or assoc.is_aborted:
            return
        calling = str(primitive.calling_ae_title).strip()
        if any(p.matches(calling, assoc.requestor.address) for p in self.allowed):
            return
        assoc.acceptor.supported_contexts = [
            cx for cx in assoc.acceptor.supported_contexts
            if str(cx.abstract_syntax) not in QR_SOP_CLASSES]
        logger.info("association from %s (%s): not allowed to query or retrieve", calling,
                    assoc.requestor.address)

    # -- C-FIND -----------------------------------------------------------------------------
    def on_find(self, event: Event) -> Iterator[tuple[Any, Dataset | bytes | None]]:
        """Pending responses, one per matching row, as the rows are read (PS3.4 C.4.1)."""
        try:
            identifier, query = self._query(event)
            template = ResponseTemplate.of(identifier, [a.keyword for a in query.return_keys()],
                                           str(query.level), self.ae_title)
            implicit = str(event.context.transfer_syntax) == ImplicitVRLittleEndian
            # on the fast path, the identifier's bytes (no pydicom Dataset made and encoded)
            respond = (template.encoded if fastpath.takes_encoded_identifiers(event.assoc)
                       else template.response)
            for row in _guarded(find(self.engine, query)):
                if event.is_cancelled:
                    yield status.CANCEL, None
                    return
                yield status.PENDING, respond(row, implicit=implicit)
        except QueryFailure as failure:
            yield failure.answer(), None
            return
        yield status.SUCCESS, None

    # -- C-MOVE and C-GET -------------------------------------------------------------------
    def on_move(self, event: Event) -> Iterator[Any]:
        """Destination, count, then one pending (status, data set) per instance (C.4.2)."""
        destination = self.destinations.get(text(event.move_destination))
        if destination is None:
            logger.warning("C-MOVE from %s to unknown destination %r refused",
                           event.assoc.requestor.ae_title.strip(),
                           text(event.move_destination))
            yield None, None
            return
        try:
            _identifier, query = self._query(event, retrieve=True)
            contexts = _move_contexts(_answered(presentations, self.engine, query))
            total = _answered(count_instances, self.engine, query)
        except QueryFailure as failure:
            # pynetdicom takes a status only after the destination, a count and an
            # association with the destination, which needs a context it accepts
            yield destination.host, destination.port, {"contexts": _FAILURE_CONTEXTS}
            yield 1
            yield failure.answer(), None
            return
        yield destination.host, destination.port, {"contexts": contexts}
        # the sub-operations go over an association the node's AE requests
        yield from self._send(event, query, total,
                              as_stored=fastpath.sends_stored_files(event.assoc.ae))

    def on_get(self, event: Event) -> Iterator[Any]:
        """Count, then one pending (status, data set) per instance (PS3.4 C.4.3)."""
        try:
            _identifier, query = self._query(event, retrieve=True)
            total = _answered(count_instances, self.engine, query)
        except QueryFailure as failure:
            yield 1
            yield failure.answer(), None
            return
        # the sub-operations go over the caller's association
        yield from self._send(event, query, total,
                              as_stored=fastpath.sends_stored_files(event.assoc))

    def _send(self, event: Event, query: Query, total: int, *, as_stored: bool
              ) -> Iterator[Any]:
        """The count, then each instance: a `StoredFile` where the association sending it
        sends files as stored (the fast path; a file that cannot be read then fails as its
        sub-operation), else the data set read with pydicom."""
        yield total
        try:
            for stored in _guarded(instances(self.engine, query)):
                if event.is_cancelled:
                    yield status.CANCEL, None
                    return
                if as_stored:
                    yield status.PENDING, StoredFile(
                        self.files.path_of(stored.file_path), sop_class_uid=stored.sop_class_uid,
                        sop_instance_uid=stored.sop_uid,
                        transfer_syntax_uid=stored.transfer_syntax_uid)
                    continue
                try:
                    dataset = dcmread(self.files.path_of(stored.file_path))
                except (OSError, InvalidDicomError, *MALFORMED_DATA_SET) as exc:
                    # counted as a failed sub-operation, its UID in the failed list
                    logger.error("cannot read %s for a retrieve: %s", stored.sop_uid, exc)
                    failed = Dataset()
                    failed.SOPInstanceUID = stored.sop_uid
                    yield status.PENDING, failed
                    continue
                yield status.PENDING, dataset
        except QueryFailure as failure:
            yield failure.answer(), None

    # -- identifiers ------------------------------------------------------------------------
    def _query(self, event: Event, *, retrieve: bool = False) -> tuple[Dataset, Query]:
        """The request's identifier and checked query. A retrieve must name what it moves:
        the unique key of its level (PS3.4 C.4.2.2.1), a list of UIDs at most.

        Raises QueryFailure with the status to answer."""
        model = QR_SOP_CLASSES.get(str(event.request.AffectedSOPClassUID))
        if model is None:
            raise QueryFailure(status.IDENTIFIER_DOES_NOT_MATCH, "not a Q/R SOP class")
        try:
            identifier = event.identifier
            keys = identifier_keys(identifier)
        except (*MALFORMED_DATA_SET, AttributeError, KeyError) as exc:
            raise QueryFailure(status.IDENTIFIER_DOES_NOT_MATCH,
                               f"identifier cannot be decoded: {type(exc).__name__}") from exc
        level = keys.pop("QueryRetrieveLevel", [""])
        try:
            query = Query.build(model, level[0] if level else "", keys)
        except QueryError as exc:
            raise QueryFailure.of(exc) from exc
        unique = UNIQUE_KEYS[query.level]
        values = [v for v in query.keys.get(unique, []) if v]
        if retrieve and (not values or any("*" in v or "?" in v for v in values)):
            raise QueryFailure(status.IDENTIFIER_DOES_NOT_MATCH,
                               f"a {query.level} level retrieve needs {unique}, no wildcards")
        logger.info("%s %s at %s level from %s: keys %s", _service(event), model, query.level,
                    event.assoc.requestor.ae_title.strip(), ", ".join(sorted(keys)))
        return identifier, query


# what any storage SCP accepts: Verification, CT Image Storage (PS3.4 A.4, B.5)
_FAILURE_CONTEXTS = [build_context("1.2.840.10008.1.1"),
                     build_context("1.2.840.10008.5.1.4.1.1.2")]


class QueryFailure(Exception):
    """A request answered with a failure status (and an error comment)."""

    def __init__(self, code: int, comment: str) -> None:
        super().__init__(comment)
        self.code = code
        self.comment = comment

    @classmethod
    def of(cls, exc: Exception) -> QueryFailure:
        if isinstance(exc, IdentifierError):
            return cls(status.IDENTIFIER_DOES_NOT_MATCH, str(exc))
        if isinstance(exc, MatchingValueError):
            return cls(status.UNABLE_TO_PROCESS, str(exc))
        logger.error("Q/R request failed in the database: %s", exc)
        return cls(status.QUERY_DATABASE_FAILURE, "database failure")

    def answer(self) -> Dataset:
        """A status data set: Status and Error Comment (LO, 64 characters)."""
        answer = Dataset()
        answer.Status = self.code
        answer.ErrorComment = self.comment[:64]
        return answer


def _answered(function: Callable[[Engine, Query], T], engine: Engine, query: Query) -> T:
    """`function(engine, query)`, with the storage layer's errors as QueryFailure."""
    try:
        return function(engine, query)
    except (QueryError, DatabaseError) as exc:
        raise QueryFailure.of(exc) from exc


def _guarded(rows: Iterator[Any]) -> Iterator[Any]:
    """`rows`, with the storage layer's errors as QueryFailure; closing it closes `rows`."""
    try:
        yield from rows
    except (QueryError, DatabaseError) as exc:
        raise QueryFailure.of(exc) from exc
    finally:
        close = getattr(rows, "close", None)
        if close is not None:
            close()


def _move_contexts(pairs: Sequence[tuple[str, str]]) -> list[PresentationContext]:
    """The contexts to propose to a move destination: per SOP class, one context for each
    transfer syntax its instances are stored in, alone (so the peer cannot pick another
    and the file goes as stored); and, for a native (uncompressed) one, a second context of
    the other little endian syntaxes, used only when the peer refuses the first (pynetdicom
    then converts). Compressed data is sent only as stored."""
    contexts: list[PresentationContext] = []
    fallbacks: set[str] = set()
    for sop_class, syntax in sorted(set(pairs)):
        contexts.append(build_context(sop_class, [syntax]))
        if not UID(syntax).is_compressed and sop_class not in fallbacks:
            fallbacks.add(sop_class)
            contexts.append(build_context(sop_class, list(_NATIVE)))
    if len(contexts) > MAX_CONTEXTS:
        logger.warning("a C-MOVE needs %d presentation contexts; the first %d are proposed, "
                       "instances needing the others fail", len(contexts), MAX_CONTEXTS)
    return contexts[:MAX_CONTEXTS]


def _service(event: Event) -> str:
    return event.event.name.removeprefix("EVT_").replace("_", "-")

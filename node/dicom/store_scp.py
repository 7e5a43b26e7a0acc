"""C-ECHO and C-STORE SCP handlers (PS3.4 Annex A and B): decode the header, hand the bytes
to the instance store, answer a status. Thin on purpose: the protocol of storing lives in
`storage.instances`."""

from __future__ import annotations

import logging
import struct
import threading
from dataclasses import dataclass, field
from typing import Any, cast

from pydicom.charset import convert_encodings
from pydicom.dataset import Dataset
from pydicom.errors import BytesLengthException, InvalidDicomError
from pydicom.filereader import read_dataset
from pydicom.tag import BaseTag
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import evt
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.events import Event

from node.config import AllowedPeer
from node.dicom import status
from node.dicom.header import HeaderValues, RawHeaderError, found_implicit_vr, read_header
from node.dicom.meta import _uid, encode_file_meta, header_values, meta_from_values
from node.series_warnings import SaidOncePerSeries, counted
from storage.associations import AssociationLog
from storage.db import is_unavailable
from storage.errors import DatabaseError, DiskFullError, InvalidUIDError, StorageError
from storage.instances import InstanceMeta, InstanceStore, StoreOutcome

logger = logging.getLogger(__name__)

PIXEL_DATA = 0x7FE00010

# What pydicom's reader raises on bytes that are not a valid data set (found by feeding it
# truncated and corrupted encodings): proof that the sender's data is at fault.
MALFORMED_DATA_SET = (EOFError, struct.error, ValueError, NotImplementedError, OverflowError,
                      BytesLengthException, InvalidDicomError)


class IngestError(Exception):
    """A received data set that cannot be stored; carries the DIMSE status to answer."""

    def __init__(self, status_code: int, message: str) -> None:
        super().__init__(message)
        self.status = status_code


@dataclass
class _Tally:
    pk: int | None
    stored: int = 0
    failed: int = 0
    duplicates: int = 0
    refused: dict[int, int] = field(default_factory=dict)  # DIMSE status -> C-STOREs

    def refuse(self, code: int) -> int:
        self.failed += 1
        self.refused[code] = self.refused.get(code, 0) + 1
        return code


class StoreHandlers:
    """Event handlers of one receiving process, bound to its AE's server."""

    def __init__(self, store: InstanceStore, log: AssociationLog, *, ae_title: str,
                 allowed: tuple[AllowedPeer, ...] = (),
                 may_store: tuple[AllowedPeer, ...] = (), default_character_set: str = "") -> None:
        """`default_character_set`: the Specific Character Set that text of a data set
        declaring none is decoded in for the index (the stored file is not changed)."""
        self.store = store
        self.log = log
        self.ae_title = ae_title
        self.allowed = allowed
        self.may_store = may_store  # of the allowed AEs, those that may store; empty: all
        self._tallies: dict[int, _Tally] = {}
        self._refusals: dict[tuple[str, int], str] = {}
        self._lock = threading.Lock()
        self._said = SaidOncePerSeries()
        self.default_character_set = default_character_set

    def refuse(self, host: str, port: int, reason: str) -> None:
        """Reject the association about to come from `host`:`port` (over a limit) with a
        transient A-ASSOCIATE-RJ, local limit exceeded (PS3.8 9.3.4)."""
        with self._lock:
            self._refusals[(host, port)] = reason

    def forget(self, host: str, port: int) -> None:
        """The connection from `host`:`port` has ended: a refusal it never used (no request
        came) must not meet a later connection from the same address."""
        with self._lock:
            self._refusals.pop((host, port), None)

    def bindings(self) -> list[Any]:
        return [
            (evt.EVT_REQUESTED, self.on_requested),
            (evt.EVT_ACCEPTED, self.on_accepted),
            (evt.EVT_RELEASED, self.on_released),
            (evt.EVT_ABORTED, self.on_aborted),
            (evt.EVT_C_ECHO, self.on_echo),
            (evt.EVT_C_STORE, self.on_store),
        ]

    # -- association ------------------------------------------------------------------------
    def on_requested(self, event: Event) -> None:
        """Check the called and calling AE titles (and the caller's host) before negotiation."""
        assoc = event.assoc
        primitive = assoc.requestor.primitive
        if primitive is None:
            return
        calling = str(primitive.calling_ae_title).strip()
        called = str(primitive.called_ae_title).strip()
        host = assoc.requestor.address
        with self._lock:
            over_limit = self._refusals.pop((host, assoc.requestor.port), None)
        if over_limit is not None:
            logger.warning("association from %s (%s) rejected: %s", calling, host, over_limit)
            self._reject(event, "local_limit_exceeded", status.REJECTED_TRANSIENT,
                         status.SOURCE_PROVIDER_PRESENTATION, status.REASON_LOCAL_LIMIT_EXCEEDED)
        elif called != self.ae_title:
            logger.warning("association from %s (%s) rejected: called AE title %r is not %r",
                           calling, host, called, self.ae_title)
            self._reject(event, "called_ae_not_recognized", status.REJECTED_PERMANENT,
                         status.SOURCE_SERVICE_USER, status.REASON_CALLED_AE_NOT_RECOGNIZED)
        elif self.allowed and not any(p.matches(calling, host) for p in self.allowed):
            logger.warning("association from %s (%s) rejected: calling AE title not allowed",
                           calling, host)
            self._reject(event, "calling_ae_not_recognized", status.REJECTED_PERMANENT,
                         status.SOURCE_SERVICE_USER, status.REASON_CALLING_AE_NOT_RECOGNIZED)

    def _reject(self, event: Event, why: str, result: int, source: int, reason: int) -> None:
        """Send the A-ASSOCIATE-RJ and count it under `why` (PS3.8 Table 9-21's reason, in
        words) for /metrics."""
        # As pynetdicom's own negotiation does: the A-ASSOCIATE-RJ must leave before the
        # socket is closed, which kill() waits for.
        event.assoc.acse.send_reject(result, source, reason)
        event.assoc.kill()
        try:
            self.log.rejected(why)
        except StorageError as exc:  # a full disk, a database away: the log line stands
            logger.error("cannot count a rejected association: %s", exc)
        except Exception:  # counting must not break the receiver
            logger.exception("cannot count a rejected association")

    def on_accepted(self, event: Event) -> None:
        rq = event.assoc.requestor
        try:
            pk: int | None = self.log.opened(calling_ae=rq.ae_title.strip(),
                                             called_ae=self.ae_title, peer_host=rq.address,
                                             peer_port=rq.port)
        except (StorageError, OSError) as exc:
            logger.error("cannot record association from %s: %s", rq.ae_title, exc)
            pk = None
        except Exception as exc:  # the audit row must not stop the association
            if is_unavailable(exc):  # its instances are refused (0xA700) and say why
                logger.error("cannot record association from %s: database unavailable",
                             rq.ae_title)
            else:
                logger.exception("cannot record association from %s", rq.ae_title)
            pk = None
        with self._lock:
            self._tallies[id(event.assoc)] = _Tally(pk)
        logger.info("association %s from %s (%s:%s) accepted", pk, rq.ae_title.strip(),
                    rq.address, rq.port)

    def on_released(self, event: Event) -> None:
        self._close(event, "released")

    def on_aborted(self, event: Event) -> None:
        self._close(event, "aborted")

    def _close(self, event: Event, state: str) -> None:
        with self._lock:
            tally = self._tallies.pop(id(event.assoc), None)
        if tally is None:
            return
        logger.info("association %s from %s %s: %d stored, %d duplicate, %d failed", tally.pk,
                    event.assoc.requestor.address, state, tally.stored, tally.duplicates,
                    tally.failed)
        try:
            if tally.pk is not None:
                self.log.closed(tally.pk, state=state, stored=tally.stored, failed=tally.failed,
                                duplicates=tally.duplicates)
            self.log.refused(tally.refused)
        except StorageError as exc:  # a full disk, say: the instances' statuses stand
            logger.error("cannot record the end of association %s: %s", tally.pk, exc)
        except Exception as exc:  # auditing must not break the association
            if is_unavailable(exc):  # it stays "open"; the next start marks it aborted
                logger.error("cannot record the end of association %s: database "
                             "unavailable", tally.pk)
            else:
                logger.exception("cannot record the end of association %s", tally.pk)

    def _tally(self, event: Event) -> _Tally:
        with self._lock:
            return self._tallies.setdefault(id(event.assoc), _Tally(None))

    # -- services ---------------------------------------------------------------------------
    def on_echo(self, event: Event) -> int:
        return status.SUCCESS

    def on_store(self, event: Event) -> int:
        tally = self._tally(event)
        calling = event.assoc.requestor.ae_title.strip()
        if self.may_store and not any(p.matches(calling, event.assoc.requestor.address)
                                      for p in self.may_store):
            logger.warning("C-STORE from %s (%s) refused (0x%04X): not allowed to store",
                           calling, event.assoc.requestor.address, status.NOT_AUTHORIZED)
            return tally.refuse(status.NOT_AUTHORIZED)
        try:
            outcome = self._store(event, tally.pk)
        except IngestError as exc:
            tally.refuse(exc.status)
            logger.warning("C-STORE %s from %s refused (0x%04X %s): %s",
                           _uid(_request(event).AffectedSOPInstanceUID),
                           event.assoc.requestor.ae_title.strip(), exc.status,
                           status.DESCRIPTIONS.get(exc.status, ""), exc)
            return exc.status
        except Exception:  # a fault of the node's, not the sender's: say so, keep serving
            logger.exception("C-STORE %s from %s failed inside the node (0x%04X)",
                             _uid(_request(event).AffectedSOPInstanceUID),
                             event.assoc.requestor.ae_title.strip(), status.PROCESSING_FAILURE)
            return tally.refuse(status.PROCESSING_FAILURE)
        if outcome is StoreOutcome.DUPLICATE:
            tally.duplicates += 1
        else:
            tally.stored += 1
        return status.SUCCESS

    def _store(self, event: Event, association_pk: int | None) -> StoreOutcome:
        request = _request(event)
        context = event.context
        syntax = _body_syntax(event)
        with counted() as complaints:  # pydicom's, e.g. a misspelt Specific Character Set
            values = _header_values(event, syntax, self.default_character_set)
        if complaints:
            self._said.say(_uid(values.get("SeriesInstanceUID")), complaints)
        meta = _meta(values, request.AffectedSOPClassUID,
                     request.AffectedSOPInstanceUID, str(context.abstract_syntax), syntax)
        header = encode_file_meta(
            sop_class_uid=meta.sop_class_uid, sop_uid=meta.sop_uid,
            transfer_syntax_uid=meta.transfer_syntax_uid,
            implementation_class_uid=event.assoc.ae.implementation_class_uid,
            implementation_version_name=event.assoc.ae.implementation_version_name or "",
            source_ae_title=event.assoc.requestor.ae_title.strip())
        payload = request.DataSet.getvalue() if request.DataSet is not None else b""
        try:
            result = self.store.store(meta, [header, payload],
                                      calling_ae=event.assoc.requestor.ae_title.strip(),
                                      association_pk=association_pk)
        except InvalidUIDError as exc:
            raise IngestError(status.CANNOT_UNDERSTAND, str(exc)) from exc
        except (DiskFullError, DatabaseError, StorageError) as exc:
            raise IngestError(status.OUT_OF_RESOURCES, str(exc)) from exc
        return result.outcome


def _before_pixels(tag: BaseTag, vr: str | None, length: int) -> bool:
    return tag >= PIXEL_DATA


_NATIVE_LITTLE_ENDIAN = {ImplicitVRLittleEndian: True, ExplicitVRLittleEndian: False}


def _body_syntax(event: Event) -> UID:
    """The transfer syntax the data set is really encoded in.

    A sender may send a file's bytes as they are (pynetdicom does, given a path) while its
    meta header names the other VR encoding: the body then does not match the presentation
    context (PS3.5 10.1). Stored under the context's name, the file could not be read
    (dcmdump refuses it). The node stores it under the name of the encoding it has and says
    so; an encapsulated (compressed) syntax is always explicit VR, so an implicit body there
    cannot be told apart from garbage and is refused (0xC000)."""
    syntax = UID(str(event.context.transfer_syntax))
    data = _request(event).DataSet
    if data is None or not syntax.is_little_endian or syntax.is_deflated:
        return syntax
    first = data.getbuffer()
    try:
        implicit = found_implicit_vr(first[:6], implicit_vr_assumed=syntax.is_implicit_VR)
    finally:
        first.release()
    if implicit == syntax.is_implicit_VR:
        return syntax
    uid = _uid(_request(event).AffectedSOPInstanceUID)
    if syntax not in _NATIVE_LITTLE_ENDIAN:
        raise IngestError(status.CANNOT_UNDERSTAND,
                          f"data set in implicit VR on a {syntax.name} presentation context")
    actual = ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian
    logger.warning("C-STORE %s from %s: data set encoded in %s, not in the presentation "
                   "context's %s; stored as %s", uid, event.assoc.requestor.ae_title.strip(),
                   actual.name, syntax.name, actual.name)
    return actual


def _header_values(event: Event, syntax: UID, default_character_set: str) -> HeaderValues:
    """The index attributes of the received data set (encoded in `syntax`): read from its
    bytes where the raw reader handles the encoding (ASCII text only), else through pydicom,
    never touching the pixel data. Text of a data set that declares no Specific Character
    Set is decoded in `default_character_set` where one is given."""
    data = _request(event).DataSet
    if data is None or syntax.is_deflated:
        try:
            return _decoded(event.dataset, default_character_set)
        except MALFORMED_DATA_SET as exc:
            raise IngestError(status.CANNOT_UNDERSTAND,
                              f"data set cannot be decoded: {type(exc).__name__}") from exc
    if syntax.is_little_endian:
        buffer = data.getbuffer()
        try:
            return read_header(buffer, implicit_vr=syntax.is_implicit_VR)
        except RawHeaderError as exc:
            logger.debug("raw header reader declined (%s); reading with pydicom", exc)
        except Exception:  # a bug of the raw reader's: pydicom reads it instead
            logger.exception("raw header reader failed on %s; reading with pydicom",
                             _uid(_request(event).AffectedSOPInstanceUID))
        finally:
            buffer.release()
    data.seek(0)
    try:
        return _decoded(read_dataset(data, syntax.is_implicit_VR, syntax.is_little_endian,
                                     stop_when=_before_pixels, defer_size=4096),
                        default_character_set)
    except MALFORMED_DATA_SET as exc:
        raise IngestError(status.CANNOT_UNDERSTAND,
                          f"data set cannot be decoded: {type(exc).__name__}: {exc}") from exc


def _decoded(ds: Dataset, default_character_set: str) -> HeaderValues:
    if default_character_set and "SpecificCharacterSet" not in ds:
        implicit_vr, little_endian = ds.original_encoding
        ds.set_original_encoding(implicit_vr, little_endian,
                                 convert_encodings(default_character_set))
    return header_values(ds)


def _request(event: Event) -> C_STORE:
    return cast(C_STORE, event.request)


def _meta(values: HeaderValues, affected_class: Any, affected_instance: Any,
          context_class: str, transfer_syntax: str) -> InstanceMeta:
    """The index attributes, checked against the request (PS3.4 B.2.3 statuses)."""
    sop_class = _uid(values.get("SOPClassUID"))
    sop_uid = _uid(values.get("SOPInstanceUID"))
    if not sop_class or not sop_uid:
        raise IngestError(status.CANNOT_UNDERSTAND, "SOP Class or SOP Instance UID missing")
    if sop_class != _uid(affected_class) or sop_class != _uid(context_class):
        raise IngestError(status.DATASET_DOES_NOT_MATCH,
                          f"SOP Class UID {sop_class} does not match the request's "
                          f"{_uid(affected_class)}")
    if sop_uid != _uid(affected_instance):
        raise IngestError(status.DATASET_DOES_NOT_MATCH,
                          f"SOP Instance UID {sop_uid} does not match the request's "
                          f"{_uid(affected_instance)}")
    try:
        return meta_from_values(values, transfer_syntax)
    except InvalidUIDError as exc:
        raise IngestError(status.CANNOT_UNDERSTAND, str(exc)) from exc

"""Storing one received instance: the file on disk and its rows in the index, both or neither."""

from __future__ import annotations

import logging
import sqlite3
from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from enum import StrEnum
from functools import cache
from typing import Any

from sqlalchemy import Connection, Engine, Integer, bindparam, delete, func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import SQLAlchemyError

from storage.db import POLL_WRITE_LOCK, DirectStatement, is_unavailable, reader
from storage.errors import DatabaseError, StorageError
from storage.files import FileStore, StoredFile
from storage.models import Base, Instance, Patient, Series, SeriesStatus, Study, utcnow
from storage.person_names import match_key
from storage.uids import validate_uid

logger = logging.getLogger(__name__)

FLUSH_THREADS = 4  # files being flushed at once, per store (one per association is plenty)


_PATIENT_COLUMNS = ("patient_key", "patient_id", "issuer_of_patient_id", "patient_name",
                    "patient_name_match", "birth_date", "sex", "created_at")
_STUDY_COLUMNS = ("study_uid", "patient_pk", "accession_number", "study_id", "study_date",
                  "study_time", "study_description", "referring_physician", "created_at")
_SERIES_COLUMNS = ("series_uid", "study_pk", "modality", "body_part", "series_number",
                   "series_description", "status", "status_reason", "instance_count",
                   "first_received_at", "last_received_at", "revision")


@dataclass(frozen=True)
class InstanceMeta:
    """The attributes of a received instance that the index keeps (read from its header)."""

    sop_class_uid: str
    sop_uid: str
    study_uid: str
    series_uid: str
    transfer_syntax_uid: str
    patient_id: str = ""
    issuer_of_patient_id: str = ""
    patient_name: str = ""
    birth_date: str = ""
    sex: str = ""
    accession_number: str = ""
    study_id: str = ""
    study_date: str = ""
    study_time: str = ""
    study_description: str = ""
    referring_physician: str = ""
    modality: str = ""
    body_part: str = ""
    series_number: int | None = None
    series_description: str = ""
    instance_number: int | None = None
    image_type: str = ""
    image_position: str = ""
    image_orientation: str = ""
    rows: int | None = None
    columns: int | None = None
    number_of_frames: int | None = None

    def __post_init__(self) -> None:
        for name in ("sop_class_uid", "sop_uid", "study_uid", "series_uid", "transfer_syntax_uid"):
            validate_uid(getattr(self, name), what=name)


class StoreOutcome(StrEnum):
    STORED = "stored"
    DUPLICATE = "duplicate"  # the SOP Instance UID was already stored; the first copy is kept


@dataclass(frozen=True)
class StoreResult:
    outcome: StoreOutcome
    instance_pk: int
    series_pk: int
    file_path: str


MAX_ORPHANS = 256  # files without rows a crash can leave: a few per open association


@dataclass(frozen=True)
class Reconciled:
    """What `InstanceStore.reconcile` undid."""

    temporaries: int  # temporary files removed
    rows_taken_back: list[str]  # SOP Instance UIDs whose row had no file
    files_quarantined: list[str]  # relative paths of files that had no row


class _Conflict(Exception):
    """Another association indexed the same SOP Instance UID at the same moment."""


class InstanceStore:
    """Writes instances durably and indexes them.

    Protocol, so that success is never answered for anything not kept: the bytes go to a
    temporary file; while a helper thread fsyncs it, gives it its final name with a hard link
    (which never replaces a file) and fsyncs the folder, this thread inserts the instance in
    one transaction (with its patient, study and series when the series is new; the database
    bumps the series' counters itself). `store` returns only
    when both are done. If the transaction fails the file is removed; if the file fails the
    row is removed again. A crash between the commit and the link leaves a row whose file is
    missing: the sender, never having had its answer, sends again, and the resend restores the
    file (see `_duplicate`).
    A SOP Instance UID that is already stored keeps its first copy; the repeat is counted in
    `instance.duplicates` and answered as success (a sender's retry is not an error).
    """

    def __init__(self, engine: Engine, files: FileStore, *, cache_size: int = 2048) -> None:
        self.engine = engine
        self.files = files
        self._insert = postgresql.insert if engine.dialect.name == "postgresql" else sqlite.insert
        self._series_cache: OrderedDict[str, tuple[int, int]] = OrderedDict()
        self._cache_size = cache_size
        # fsync and link run here, beside the database transaction (both wait on the disk).
        self._flusher = ThreadPoolExecutor(max_workers=FLUSH_THREADS,
                                           thread_name_prefix="file-flush")
        # The receive path runs these for every instance: built once, with bound parameters,
        # so SQLAlchemy compiles them once (profiling showed statement building dominating).
        # The instance's series is bumped by the database (trigger instance_indexed).
        insert_instance = (
            self._insert(Instance)
            .values({c.name: bindparam(c.name) for c in Instance.__table__.c if c.name != "id"})
            .on_conflict_do_nothing(index_elements=["sop_uid"]))
        # SQLite reports the new key as lastrowid; asking for it with RETURNING would keep
        # the write lock until the row is fetched.
        self._returning = engine.dialect.name == "postgresql"
        self._insert_instance = (insert_instance.returning(Instance.id) if self._returning
                                 else insert_instance)
        self._direct = (DirectStatement(engine, insert_instance)
                        if engine.dialect.name == "sqlite" else None)
        self._reader = reader(engine)
        self._writer = engine.execution_options(**{POLL_WRITE_LOCK: True})
        self._series_by_uid = select(Series.id, Series.study_pk).where(
            Series.series_uid == bindparam("uid"))
        self._count_duplicate = (
            update(Instance).where(Instance.sop_uid == bindparam("dup_sop"))
            .values(duplicates=Instance.duplicates + 1,
                    association_pk=func.coalesce(bindparam("dup_association", type_=Integer),
                                                 Instance.association_pk))
            .returning(Instance.id, Instance.series_pk, Instance.file_path))
        # A new series (and its study and patient, when new): built once too, as above.
        self._new_patient = self._insert_new(Patient, _PATIENT_COLUMNS, "patient_key")
        self._new_study = self._insert_new(Study, _STUDY_COLUMNS, "study_uid")
        self._new_series = self._insert_new(Series, _SERIES_COLUMNS, "series_uid")
        self._patient_by_key = select(Patient.id).where(Patient.patient_key == bindparam("key"))
        self._study_by_uid = select(Study.id).where(Study.study_uid == bindparam("uid"))
        # A resend keeps a series that is still receiving from settling until it ends.
        self._resend_received = (
            update(Series).where(Series.id == bindparam("dup_series"),
                                 Series.status == SeriesStatus.RECEIVING,
                                 Series.last_received_at < bindparam("dup_now"))
            .values(last_received_at=bindparam("dup_now")))

    def _insert_new(self, model: type[Base], columns: tuple[str, ...], unique: str) -> Any:
        """INSERT of `columns` (bound by name) that does nothing when `unique` is taken."""
        return (self._insert(model).values({name: bindparam(name) for name in columns})
                .on_conflict_do_nothing(index_elements=[unique]))

    def store(self, meta: InstanceMeta, chunks: Sequence[bytes], *, calling_ae: str = "",
              association_pk: int | None = None) -> StoreResult:
        relative = self.files.relative_path(meta.study_uid, meta.series_uid, meta.sop_uid)
        size = sum(len(chunk) for chunk in chunks)
        tmp = self.files.write_temp(relative, list(chunks))
        # The file is named outside the transaction, so no file work happens while the
        # database's write lock is held (on SQLite, one writer for all receiving processes).
        flushing = self._flusher.submit(self.files.publish, tmp, relative)
        try:
            result = self._index(meta, relative, size, calling_ae, association_pk)
        except _Conflict:
            return self._resent(meta, tmp, relative, _settled(flushing), association_pk)
        except BaseException:
            if _settled(flushing) is not None:
                self.files.remove(relative)
            self.files.discard(tmp)
            raise
        try:
            placed = flushing.result()
        except BaseException:
            self._unindex(result)
            raise
        if placed is None:
            # A file without a row: left by a crash between naming and commit. Replace it.
            self.files.commit_temp(tmp, relative)
        return result

    def _resent(self, meta: InstanceMeta, tmp: str, relative: str,
                placed: StoredFile | None, association_pk: int | None) -> StoreResult:
        """The SOP Instance UID is indexed already: count the repeat, keep the first copy
        (or this one, when the first copy's file is missing)."""
        duplicate = self._duplicate(meta, association_pk)
        if duplicate is None:  # the row went away again
            raise DatabaseError(f"indexing {meta.sop_uid}: conflicting rows")
        if placed is None:
            self.files.discard(tmp)  # the first copy is under this name
            if not self.files.exists(duplicate.file_path):
                raise StorageError(f"{meta.sop_uid} is indexed but neither its file nor "
                                   "this copy could be kept")
        elif duplicate.file_path != relative:
            if self.files.exists(duplicate.file_path):
                self.files.remove(relative)
            else:
                self._repoint(duplicate.instance_pk, relative)
                return replace(duplicate, file_path=relative)
        return duplicate

    def _index(self, meta: InstanceMeta, relative: str, size: int, calling_ae: str,
               association_pk: int | None) -> StoreResult:
        now = utcnow()
        values = fit_columns(Instance, {
            **_instance_values(meta), "series_pk": None, "file_path": relative,
            "file_size": size, "received_at": now, "calling_ae": calling_ae,
            "association_pk": association_pk, "duplicates": 0,
        })
        cached = self._cached_keys(meta.series_uid)
        try:
            if cached is None and self._direct is not None:
                cached = self._committed_keys(meta.series_uid)
            if cached is not None and self._direct is not None:
                # A known series on SQLite: the insert (and its trigger) is one transaction.
                row, count = self._direct.execute({**values, "series_pk": cached[0]})
                instance_pk = row if count == 1 else None  # None: the SOP UID is known
                keys = cached
            else:
                with self._writer.begin() as conn:
                    keys = cached or self._series_keys(conn, meta, now)
                    instance_pk = self._insert_row(conn, {**values, "series_pk": keys[0]})
                    if instance_pk is None:
                        raise _Conflict  # and a series made for it is rolled back
        except (SQLAlchemyError, sqlite3.Error) as exc:
            away = "database unavailable: " if is_unavailable(exc) else ""
            raise DatabaseError(f"{away}indexing {meta.sop_uid} failed: "
                                f"{exc.__class__.__name__}: {str(exc).splitlines()[0]}") from exc
        if instance_pk is None:
            raise _Conflict
        self._remember(meta.series_uid, keys)
        return StoreResult(StoreOutcome.STORED, instance_pk, keys[0], relative)

    def _committed_keys(self, series_uid: str) -> tuple[int, int] | None:
        """The keys of a series another process has indexed, read without SQLite's write lock.

        Four associations sending one series to two receiving processes: the second process's
        first instances would otherwise queue for the write lock (BEGIN IMMEDIATE, SQLite's busy
        handler sleeping 1 to 100 ms between tries) against the first's stream of inserts, only
        to find the series made."""
        with self._reader.connect() as conn:
            row = conn.execute(self._series_by_uid, {"uid": series_uid}).first()
        return (row[0], row[1]) if row is not None else None

    def _insert_row(self, conn: Connection, values: dict[str, Any]) -> int | None:
        """The new instance's key; None when its SOP Instance UID is indexed already."""
        result = conn.execute(self._insert_instance, values)
        if self._returning:
            return result.scalar()
        return result.lastrowid if result.rowcount == 1 else None

    def _duplicate(self, meta: InstanceMeta,
                   association_pk: int | None = None) -> StoreResult | None:
        """Count a repeat of a stored instance (its first copy is kept); None if not stored.

        The repeat's association becomes the instance's last transfer, and a series still
        receiving counts it as received now: a resend made only of repeats ends the wait
        of a transfer that was aborted (`storage.series.SeriesIndex.settled`)."""
        try:
            with self.engine.begin() as conn:
                row = conn.execute(self._count_duplicate, {
                    "dup_sop": meta.sop_uid, "dup_association": association_pk}).first()
                if row is not None:
                    conn.execute(self._resend_received,
                                 {"dup_series": row[1], "dup_now": utcnow()})
        except SQLAlchemyError as exc:
            raise DatabaseError(f"indexing {meta.sop_uid} failed: {exc.__class__.__name__}: "
                                f"{str(exc).splitlines()[0]}") from exc
        if row is None:
            return None
        return StoreResult(StoreOutcome.DUPLICATE, row[0], row[1], row[2])

    def reconcile(self, window: timedelta) -> Reconciled:
        """Make rows and files agree after a crash, for start-up: temporary files are removed;
        rows received within `window` of the newest one whose file is missing are taken back
        (the commit came before the file's naming, see `store`); files of that time without a
        row are moved to the quarantine folder (the naming came before the commit). Neither
        kind was acknowledged: the sender sends it again. Without rows, files are left alone.
        More than MAX_ORPHANS files without rows are left alone too (a wrong database?)."""
        with self.engine.connect() as conn:
            newest = conn.execute(select(func.max(Instance.received_at))).scalar()
            recent = [] if newest is None else conn.execute(
                select(Instance.id, Instance.series_pk, Instance.file_path, Instance.sop_uid)
                .where(Instance.received_at >= newest - window)).all()
        since = None if newest is None else (newest - window).timestamp()
        temporaries, files = self.files.sweep(since)
        missing = [row for row in recent if not self.files.exists(row.file_path)]
        for row in missing:
            self._unindex(StoreResult(StoreOutcome.STORED, row.id, row.series_pk,
                                      row.file_path))
        orphans = self._without_rows(files)
        if len(orphans) > MAX_ORPHANS:
            logger.error("%d recent files have no index row: left in place (is this the "
                         "file store of this database?)", len(orphans))
            orphans = []
        for relative in orphans:
            self.files.quarantine(relative)
        return Reconciled(temporaries, [row.sop_uid for row in missing], orphans)

    def _without_rows(self, files: list[str]) -> list[str]:
        known: set[str] = set()
        with self.engine.connect() as conn:
            for start in range(0, len(files), 500):
                chunk = files[start:start + 500]
                known.update(conn.execute(select(Instance.file_path)
                                          .where(Instance.file_path.in_(chunk))).scalars())
        return [f for f in files if f not in known]

    def take_back(self, result: StoreResult) -> bool:
        """Remove an instance the node stored itself and no longer stands by (the SR of a
        result that was not recorded: its worker lost the job's lease): its row, then its
        file. False, and logged, when the database refused; the instance then stays."""
        if not self._unindex(result):
            return False
        self.files.remove(result.file_path)
        return True

    def _unindex(self, result: StoreResult) -> bool:
        """Take back an indexed instance whose file could not be kept; False when the
        database refused (logged)."""
        try:
            with self.engine.begin() as conn:
                conn.execute(delete(Instance).where(Instance.id == result.instance_pk))
                conn.execute(update(Series).where(Series.id == result.series_pk).values(
                    instance_count=Series.instance_count - 1))
        except SQLAlchemyError:
            # The row stays without its file; a resend of the instance restores the file.
            logger.exception("cannot take back the row of %s", result.file_path)
            return False
        return True

    def _repoint(self, instance_pk: int, relative: str) -> None:
        try:
            with self.engine.begin() as conn:
                conn.execute(update(Instance).where(Instance.id == instance_pk).values(
                    file_path=relative))
        except SQLAlchemyError as exc:
            raise DatabaseError(f"re-pointing instance {instance_pk}: "
                                f"{exc.__class__.__name__}") from exc

    def _cached_keys(self, series_uid: str) -> tuple[int, int] | None:
        cached = self._series_cache.get(series_uid)
        if cached is not None:
            self._series_cache.move_to_end(series_uid)
        return cached

    def _remember(self, series_uid: str, keys: tuple[int, int] | None) -> None:
        # Only keys of committed rows are cached: a rolled-back series must be created again.
        if keys is None:
            return
        self._series_cache[series_uid] = keys
        if len(self._series_cache) > self._cache_size:
            self._series_cache.popitem(last=False)

    def _series_keys(self, conn: Connection, meta: InstanceMeta, now: datetime) -> tuple[int, int]:
        patient_key = f"{meta.patient_id}\\{meta.issuer_of_patient_id}"
        conn.execute(self._new_patient, fit_columns(Patient, dict(
            patient_key=patient_key, patient_id=meta.patient_id,
            issuer_of_patient_id=meta.issuer_of_patient_id, patient_name=meta.patient_name,
            patient_name_match=match_key(meta.patient_name),
            birth_date=meta.birth_date, sex=meta.sex, created_at=now,
        )))
        patient_pk = conn.execute(self._patient_by_key, {"key": patient_key}).scalar_one()
        conn.execute(self._new_study, fit_columns(Study, dict(
            study_uid=meta.study_uid, patient_pk=patient_pk,
            accession_number=meta.accession_number, study_id=meta.study_id,
            study_date=meta.study_date, study_time=meta.study_time,
            study_description=meta.study_description,
            referring_physician=meta.referring_physician, created_at=now,
        )))
        study_pk = conn.execute(self._study_by_uid, {"uid": meta.study_uid}).scalar_one()
        conn.execute(self._new_series, fit_columns(Series, dict(
            series_uid=meta.series_uid, study_pk=study_pk, modality=meta.modality,
            body_part=meta.body_part, series_number=meta.series_number,
            series_description=meta.series_description, status=SeriesStatus.RECEIVING,
            status_reason="", instance_count=0, first_received_at=now, last_received_at=now,
            revision=0,
        )))
        series_pk = conn.execute(self._series_by_uid, {"uid": meta.series_uid}).one()[0]
        return series_pk, study_pk


def _settled(flushing: Future[StoredFile | None]) -> StoredFile | None:
    """The flushed file once its flush is over; None when its name was taken or it failed."""
    try:
        return flushing.result()
    except Exception:  # the caller's own error is the one to report
        logger.debug("flushing a file failed too", exc_info=True)
        return None


def fit_columns(model: type[Base], values: dict[str, Any]) -> dict[str, Any]:
    """Clip strings to their column's length: a sender's over-long SH or LO value must not
    make the whole instance fail on a database that enforces lengths (PostgreSQL)."""
    lengths = _column_lengths(model)
    out = {}
    for key, value in values.items():
        length = lengths[key]
        out[key] = value[:length] if isinstance(value, str) and length else value
    return out


@cache
def _column_lengths(model: type[Base]) -> dict[str, int | None]:
    return {c.name: getattr(c.type, "length", None) for c in model.__table__.c}


def _instance_values(meta: InstanceMeta) -> dict[str, Any]:
    return {
        "sop_uid": meta.sop_uid,
        "sop_class_uid": meta.sop_class_uid,
        "transfer_syntax_uid": meta.transfer_syntax_uid,
        "instance_number": meta.instance_number,
        "image_type": meta.image_type,
        "image_position": meta.image_position,
        "image_orientation": meta.image_orientation,
        "rows": meta.rows,
        "columns": meta.columns,
        "number_of_frames": meta.number_of_frames,
    }

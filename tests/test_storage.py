"""The instance store and file store, on SQLite and on PostgreSQL."""

from __future__ import annotations

import os
import shutil
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Engine, event, func, select, text, update

from storage import associations, db, instances
from storage.associations import AssociationLog
from storage.errors import DatabaseError, DiskFullError, InvalidUIDError, StorageError
from storage.files import FileStore, StoredFile
from storage.instances import InstanceMeta, InstanceStore, StoreOutcome
from storage.models import Association, Base, Instance, Patient, Series, SeriesStatus, Study
from storage.uids import validate_uid

STUDY, SERIES = "1.2.3.4", "1.2.3.4.5"
CT = "1.2.840.10008.5.1.4.1.1.2"
ELE = "1.2.840.10008.1.2.1"


def meta(sop: str, **kw: object) -> InstanceMeta:
    values: dict[str, object] = dict(sop_class_uid=CT, sop_uid=sop, study_uid=STUDY,
                                     series_uid=SERIES, transfer_syntax_uid=ELE,
                                     patient_id="P1", patient_name="DOE^JANE", modality="CT")
    values.update(kw)
    return InstanceMeta(**values)  # type: ignore[arg-type]


def count(engine: Engine, model: type[Base]) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(model)).scalar_one())


def files_under(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


def test_migrations_match_the_models(engine: Engine) -> None:
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == []


def test_store_writes_file_and_rows(engine: Engine, tmp_path: Path) -> None:
    files = FileStore(tmp_path / "data")
    store = InstanceStore(engine, files)
    result = store.store(meta("1.2.3.4.5.1", instance_number=1), [b"HEAD", b"BODY"],
                         calling_ae="CT1")
    assert result.outcome is StoreOutcome.STORED
    path = tmp_path / "data" / STUDY / SERIES / "1.2.3.4.5.1.dcm"
    assert path.read_bytes() == b"HEADBODY"
    assert files_under(tmp_path / "data") == [path]  # no temporary file left
    with engine.connect() as conn:
        inst = conn.execute(select(Instance)).mappings().one()
        series = conn.execute(select(Series)).mappings().one()
        study = conn.execute(select(Study)).mappings().one()
        patient = conn.execute(select(Patient)).mappings().one()
    assert (inst["file_path"], inst["file_size"], inst["calling_ae"]) == (
        f"{STUDY}/{SERIES}/1.2.3.4.5.1.dcm", 8, "CT1")
    assert (series["instance_count"], series["status"], series["revision"]) == (
        1, SeriesStatus.RECEIVING, 1)
    assert study["study_uid"] == STUDY and patient["patient_name"] == "DOE^JANE"
    assert series["last_received_at"].tzinfo is not None


def test_each_new_instance_bumps_its_series(engine: Engine, tmp_path: Path) -> None:
    store = InstanceStore(engine, FileStore(tmp_path / "data"))
    store.store(meta("1.2.3.4.5.1"), [b"one"])
    with engine.begin() as conn:  # the series was triaged; then more of it arrives
        conn.execute(update(Series).values(status=SeriesStatus.DONE, status_reason="done"))
    second = store.store(meta("1.2.3.4.5.2"), [b"two"])  # a known series: one statement
    with engine.connect() as conn:
        series = conn.execute(select(Series)).mappings().one()
        received = conn.execute(select(Instance.received_at).where(
            Instance.id == second.instance_pk)).scalar_one()
    assert (series["instance_count"], series["revision"], series["status"],
            series["status_reason"]) == (2, 2, SeriesStatus.RECEIVING, "")
    assert series["last_received_at"] == received and received.tzinfo is not None
    # A repeat changes neither the count nor the revision; while the series is receiving it
    # is received now (a resend under way keeps it from settling).
    store.store(meta("1.2.3.4.5.2"), [b"two"])
    with engine.connect() as conn:
        again = conn.execute(select(Series)).mappings().one()
    assert (again["instance_count"], again["revision"]) == (2, 2)
    assert again["last_received_at"] > received


def test_timestamps_are_stored_alike_either_way(engine: Engine, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    store = InstanceStore(engine, FileStore(tmp_path / "data"))
    monkeypatch.setattr(instances, "utcnow", lambda: datetime(2026, 11, 26, 23, 0, 1, tzinfo=UTC))
    store.store(meta("1.2.3.4.5.1"), [b"one"])  # a new series: through SQLAlchemy
    store.store(meta("1.2.3.4.5.2"), [b"two"])  # a known one: on SQLite, through the driver
    with engine.connect() as conn:
        stored = conn.execute(text("SELECT CAST(received_at AS TEXT) FROM instance")).scalars()
        assert len(set(stored)) == 1
        received = conn.execute(select(Instance.received_at)).scalars()
        assert set(received) == {datetime(2026, 11, 26, 23, 0, 1, tzinfo=UTC)}


def test_a_series_another_process_indexed_is_read_not_written(engine: Engine,
                                                              tmp_path: Path) -> None:
    if engine.dialect.name != "sqlite":
        pytest.skip("SQLite's database-wide write lock")
    files = FileStore(tmp_path / "data")
    first, second = InstanceStore(engine, files), InstanceStore(engine, files)  # two caches
    first.store(meta("1.2.3.4.5.1"), [b"x"])
    statements: list[str] = []

    def seen(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        statements.append(statement.split()[0])

    event.listen(engine, "before_cursor_execute", seen)
    try:
        result = second.store(meta("1.2.3.4.5.2"), [b"y"])
    finally:
        event.remove(engine, "before_cursor_execute", seen)
    assert result.outcome is StoreOutcome.STORED
    # One read through SQLAlchemy; the insert went by the driver; no write transaction.
    assert statements == ["BEGIN", "SELECT"]
    with engine.connect() as conn:
        assert conn.execute(select(Instance.series_pk).distinct()).scalars().all() == [
            result.series_pk]
        assert conn.execute(select(Series.instance_count)).scalar_one() == 2


def test_dispose_closes_the_driver_connections_too(engine: Engine, tmp_path: Path) -> None:
    if engine.dialect.name != "sqlite":
        pytest.skip("the driver path is SQLite's")
    database = str(engine.url.database)
    store = InstanceStore(engine, FileStore(tmp_path / "data"))
    store.store(meta("1.2.3.4.5.1"), [b"x"])
    store.store(meta("1.2.3.4.5.2"), [b"y"])  # the series is known: through the driver

    def open_on_database() -> list[str]:
        found = []
        for fd in os.listdir("/proc/self/fd"):
            try:
                target = os.readlink(f"/proc/self/fd/{fd}")
            except OSError:
                continue  # listdir's own descriptor, closed by now
            if target.startswith(database):
                found.append(target)
        return found

    assert open_on_database()
    engine.dispose()
    assert open_on_database() == []


def test_association_log_records_opening_and_end(engine: Engine,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    log = AssociationLog(engine)  # on SQLite through the driver, as the instance insert
    opened_at = datetime(2026, 11, 27, 3, 0, 0, tzinfo=UTC)
    monkeypatch.setattr(associations, "utcnow", lambda: opened_at)
    first = log.opened(calling_ae="CT1", called_ae="ICHTRIAGE", peer_host="127.0.0.1",
                       peer_port=40001)
    second = log.opened(calling_ae="A_TITLE_OVER_16_CHARS", called_ae="ICHTRIAGE",
                        peer_host="127.0.0.1", peer_port=None)
    assert second > first
    monkeypatch.setattr(associations, "utcnow", lambda: opened_at.replace(second=7))
    log.closed(first, state="released", stored=3, failed=1, duplicates=2)
    with engine.connect() as conn:
        rows = conn.execute(select(Association.__table__).order_by(Association.id)).all()
        assert [(r.calling_ae, r.peer_port, r.state, r.stored, r.failed, r.duplicates)
                for r in rows] == [("CT1", 40001, "released", 3, 1, 2),
                                   ("A_TITLE_OVER_16_", None, "open", 0, 0, 0)]
        assert rows[0].started_at == opened_at and rows[0].ended_at == opened_at.replace(second=7)
        assert rows[1].ended_at is None
        # Stored as SQLAlchemy itself stores them (the readers compare them as text).
        texts = conn.execute(text("SELECT CAST(started_at AS TEXT) FROM association")).scalars()
        assert len(set(texts)) == 1


def test_duplicate_keeps_first_copy_and_counts(engine: Engine, tmp_path: Path) -> None:
    store = InstanceStore(engine, FileStore(tmp_path / "data"))
    store.store(meta("1.2.3.4.5.1"), [b"first"])
    again = store.store(meta("1.2.3.4.5.1"), [b"second"])
    assert again.outcome is StoreOutcome.DUPLICATE
    (only,) = files_under(tmp_path / "data")
    assert only.read_bytes() == b"first"
    with engine.connect() as conn:
        assert conn.execute(select(Instance.duplicates)).scalar_one() == 1
        assert conn.execute(select(Series.instance_count)).scalar_one() == 1


def test_many_series_share_patient_and_study(engine: Engine, tmp_path: Path) -> None:
    store = InstanceStore(engine, FileStore(tmp_path / "data"))
    for i in range(3):
        store.store(meta(f"1.2.3.4.5.{i + 1}"), [b"x"])
        store.store(meta(f"1.2.3.4.6.{i + 1}", series_uid="1.2.3.4.6"), [b"x"])
    assert (count(engine, Patient), count(engine, Study), count(engine, Series),
            count(engine, Instance)) == (1, 1, 2, 6)


@pytest.mark.parametrize("bad", ["1.2.abc", "1..2", "1.02.3", "1." + "2" * 70, "", "../../etc"])
def test_invalid_uids_never_reach_a_path(bad: str) -> None:
    with pytest.raises(InvalidUIDError):
        validate_uid(bad)
    with pytest.raises(InvalidUIDError):
        meta(bad)
    with pytest.raises(InvalidUIDError):
        FileStore(Path("/nonexistent")).relative_path(STUDY, SERIES, bad)


def test_database_failure_keeps_no_file(engine: Engine, tmp_path: Path) -> None:
    store = InstanceStore(engine, FileStore(tmp_path / "data"))
    store.store(meta("1.2.3.4.5.1"), [b"x"])
    with engine.begin() as conn:  # a real database error: the table is gone
        conn.execute(text("ALTER TABLE instance RENAME TO instance_away"))
    with pytest.raises(DatabaseError):
        store.store(meta("1.2.3.4.5.2"), [b"y"])
    with engine.begin() as conn:
        conn.execute(text("ALTER TABLE instance_away RENAME TO instance"))
    assert [p.name for p in files_under(tmp_path / "data")] == ["1.2.3.4.5.1.dcm"]
    with engine.connect() as conn:
        assert conn.execute(select(Series.instance_count)).scalar_one() == 1
    # and the store goes on working afterwards
    assert store.store(meta("1.2.3.4.5.3"), [b"z"]).outcome is StoreOutcome.STORED


@pytest.mark.parametrize("series", ["known", "new"])
def test_a_held_write_lock_is_waited_for_then_given_up(
        engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, series: str) -> None:
    """Both ways an instance is indexed wait for another writer's lock, polling for it, and
    give up after BUSY_TIMEOUT: the direct insert of a known series, and the transaction of
    a new one (which leaves its connection's busy timeout as it found it)."""
    if engine.dialect.name != "sqlite":
        pytest.skip("SQLite's database-wide write lock")
    store = InstanceStore(engine, FileStore(tmp_path / "data"))
    kept = ["1.2.3.4.5.1.dcm"] if series == "known" else []
    if series == "known":
        store.store(meta("1.2.3.4.5.1"), [b"x"])  # the series is known: the next goes direct
    other = engine.connect()
    other.begin()  # BEGIN IMMEDIATE: another process's writer holds the lock
    release = threading.Timer(0.3, other.commit)
    release.start()
    assert store.store(meta("1.2.3.4.5.2"), [b"y"]).outcome is StoreOutcome.STORED
    release.join()
    monkeypatch.setattr(db, "BUSY_TIMEOUT", 0.2)
    other.begin()
    late = meta("1.2.3.4.5.3") if series == "known" else meta("1.2.3.4.5.3", series_uid="1.2.9")
    with pytest.raises(DatabaseError, match="locked"):
        store.store(late, [b"z"])
    other.rollback()
    other.close()
    assert sorted(p.name for p in files_under(tmp_path / "data")) == [*kept, "1.2.3.4.5.2.dcm"]
    with engine.connect() as conn:
        assert conn.execute(select(Series.series_uid, Series.instance_count)).all() == [
            (SERIES, len(kept) + 1)]
    with store._writer.connect() as conn:  # the connection a new series' transaction used
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == db.SQLITE_BUSY_TIMEOUT_MS


def test_a_series_folder_removed_meanwhile_is_made_again(engine: Engine,
                                                        tmp_path: Path) -> None:
    store = InstanceStore(engine, FileStore(tmp_path / "data"))
    store.store(meta("1.2.3.4.5.1"), [b"one"])
    shutil.rmtree(tmp_path / "data" / STUDY)  # say, an administrator cleaning up by hand
    store.store(meta("1.2.3.4.5.2"), [b"two"])
    assert [p.name for p in files_under(tmp_path / "data")] == ["1.2.3.4.5.2.dcm"]


def test_full_disk_refuses_before_writing(engine: Engine, tmp_path: Path) -> None:
    store = InstanceStore(engine, FileStore(tmp_path / "data", min_free_bytes=2**62))
    with pytest.raises(DiskFullError):
        store.store(meta("1.2.3.4.5.1"), [b"x"])
    assert files_under(tmp_path / "data") == []
    assert count(engine, Instance) == 0


def test_over_long_values_are_clipped_not_refused(engine: Engine, tmp_path: Path) -> None:
    store = InstanceStore(engine, FileStore(tmp_path / "data"))
    store.store(meta("1.2.3.4.5.1", accession_number="A" * 40, modality="CT" * 20), [b"x"])
    with engine.connect() as conn:
        assert conn.execute(select(Study.accession_number)).scalar_one() == "A" * 16


def test_a_file_left_without_a_row_is_replaced(engine: Engine, tmp_path: Path) -> None:
    """A crash between naming the file and committing its row leaves an orphan file."""
    files = FileStore(tmp_path / "data")
    orphan = files.path_of(files.relative_path(STUDY, SERIES, "1.2.3.4.5.1"))
    orphan.parent.mkdir(parents=True)
    orphan.write_bytes(b"half a file")
    result = InstanceStore(engine, files).store(meta("1.2.3.4.5.1"), [b"whole"])
    assert result.outcome is StoreOutcome.STORED
    assert orphan.read_bytes() == b"whole"
    assert files_under(tmp_path / "data") == [orphan]


def test_a_row_left_without_its_file_gets_the_resent_copy(engine: Engine,
                                                          tmp_path: Path) -> None:
    """A crash between committing the row and naming the file leaves a row without a file;
    the sender, never answered, sends again, and that copy is kept."""
    files = FileStore(tmp_path / "data")
    store = InstanceStore(engine, files)
    first = store.store(meta("1.2.3.4.5.1"), [b"lost"])
    files.remove(first.file_path)
    again = store.store(meta("1.2.3.4.5.1"), [b"resent"])
    assert again.outcome is StoreOutcome.DUPLICATE
    assert files.path_of(first.file_path).read_bytes() == b"resent"
    assert files_under(tmp_path / "data") == [files.path_of(first.file_path)]


class _FlushFails(FileStore):
    """A file store whose disk fills up just as a file is being flushed."""

    def publish(self, tmp: str, relative: str) -> StoredFile | None:
        os.unlink(tmp)
        raise DiskFullError(f"no space left writing {relative}")


def test_a_file_that_cannot_be_flushed_takes_its_row_back(engine: Engine,
                                                          tmp_path: Path) -> None:
    store = InstanceStore(engine, FileStore(tmp_path / "data"))
    store.store(meta("1.2.3.4.5.1"), [b"x"])
    failing = InstanceStore(engine, _FlushFails(tmp_path / "data"))
    with pytest.raises(DiskFullError):
        failing.store(meta("1.2.3.4.5.2"), [b"y"])
    assert [p.name for p in files_under(tmp_path / "data")] == ["1.2.3.4.5.1.dcm"]
    assert count(engine, Instance) == 1
    with engine.connect() as conn:
        assert conn.execute(select(Series.instance_count)).scalar_one() == 1
    # and the instance is stored when it comes again
    assert store.store(meta("1.2.3.4.5.2"), [b"y"]).outcome is StoreOutcome.STORED


def test_new_study_and_series_folders_are_made_durable(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """When a file is placed in a folder for the first time, the folder and every folder
    above it up to the root are fsynced (the series folder holds the file's name, the study
    folder the series folder's, the root the study folder's); later files in that folder
    sync only the folder. A folder another process made counts as new: its name may not be
    on disk yet."""
    from storage import files as files_module

    synced: list[str] = []
    real = files_module._fsync_dir
    monkeypatch.setattr(files_module, "_fsync_dir",
                        lambda path: (synced.append(os.path.normpath(path)), real(path)))
    store = FileStore(tmp_path / "data")
    store.root.mkdir()
    root = os.path.normpath(store.root)
    study = os.path.join(root, "1.2.3")

    def place(series_uid: str, sop_uid: str) -> None:
        relative = store.relative_path("1.2.3", series_uid, sop_uid)
        assert store.publish(store.write_temp(relative, [b"x"]), relative) is not None

    place("1.2.3.4", "1.2.3.4.5")
    assert synced == [os.path.join(study, "1.2.3.4"), study, root]
    synced.clear()
    place("1.2.3.4", "1.2.3.4.6")  # the same series again
    assert synced == [os.path.join(study, "1.2.3.4")]
    synced.clear()
    place("1.2.3.9", "1.2.3.9.5")  # a new series, same study
    assert synced == [os.path.join(study, "1.2.3.9"), study, root]
    synced.clear()
    os.mkdir(os.path.join(study, "1.2.3.7"))  # as another receiving process would
    place("1.2.3.7", "1.2.3.7.5")
    assert synced == [os.path.join(study, "1.2.3.7"), study, root]


def test_a_file_whose_folders_cannot_be_synced_is_not_stored(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A failed fsync of a folder above the file is the store's error, and the next file in
    that folder tries the sync again."""
    from storage import files as files_module

    real = files_module._fsync_dir
    store = FileStore(tmp_path / "data")
    store.root.mkdir()
    failing = os.path.normpath(store.root)

    def fsync_dir(path: str | Path) -> None:
        if os.path.normpath(path) == failing:
            raise OSError(5, "Input/output error")
        real(path)

    monkeypatch.setattr(files_module, "_fsync_dir", fsync_dir)
    relative = store.relative_path("1.2.3", "1.2.3.4", "1.2.3.4.5")
    with pytest.raises(StorageError, match="cannot sync the folders of 1.2.3/1.2.3.4/1.2.3.4.5"):
        store.publish(store.write_temp(relative, [b"x"]), relative)
    synced: list[str] = []
    monkeypatch.setattr(files_module, "_fsync_dir",
                        lambda path: (synced.append(os.path.normpath(path)), real(path)))
    second = store.relative_path("1.2.3", "1.2.3.4", "1.2.3.4.6")
    assert store.publish(store.write_temp(second, [b"y"]), second) is not None
    assert failing in synced


def test_start_up_makes_rows_and_files_agree(engine: Engine, tmp_path: Path) -> None:
    """What a SIGKILL leaves: a temporary file of an interrupted write, a row committed before
    its file got its name, a file named before its row was committed (neither acknowledged).
    The first is removed, the row taken back, the file quarantined; whole instances stay."""
    from datetime import timedelta

    from storage.files import QUARANTINE

    files = FileStore(tmp_path / "data")
    store = InstanceStore(engine, files)
    kept = [store.store(meta(f"{SERIES}.{i}"), [b"DICM" * 10]) for i in range(3)]
    lost = store.store(meta(f"{SERIES}.9"), [b"DICM" * 10])
    files.remove(lost.file_path)  # the crash came before its name was made
    folder = files.path_of(lost.file_path).parent
    (folder / ".incoming-77-0.tmp").write_bytes(b"half")
    orphan = files.relative_path(STUDY, SERIES, f"{SERIES}.8")
    files.path_of(orphan).write_bytes(b"DICM")  # named, and the crash came before the commit
    done = store.reconcile(timedelta(minutes=10))
    assert done.temporaries == 1 and not list(folder.glob(".incoming-*"))
    assert done.rows_taken_back == [f"{SERIES}.9"]
    assert done.files_quarantined == [orphan]
    assert (files.root / QUARANTINE / orphan).read_bytes() == b"DICM"
    with engine.connect() as conn:
        uids = set(conn.execute(select(Instance.sop_uid)).scalars())
        count = conn.execute(select(Series.instance_count)).scalar()
    assert uids == {f"{SERIES}.{i}" for i in range(3)}
    assert count == 3 and all(files.exists(k.file_path) for k in kept)
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        f"{SERIES}.{i}.dcm" for i in range(3))
    again = store.reconcile(timedelta(minutes=10))  # nothing more to do
    assert (again.temporaries, again.rows_taken_back, again.files_quarantined) == (0, [], [])


def test_files_are_left_alone_without_any_rows(engine: Engine, tmp_path: Path) -> None:
    """A file store beside an empty (or wrong) database: nothing is moved."""
    from datetime import timedelta

    files = FileStore(tmp_path / "data")
    relative = files.relative_path(STUDY, SERIES, f"{SERIES}.1")
    files.path_of(relative).parent.mkdir(parents=True)
    files.path_of(relative).write_bytes(b"DICM")
    done = InstanceStore(engine, files).reconcile(timedelta(minutes=10))
    assert done.files_quarantined == [] and files.exists(relative)

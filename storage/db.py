"""Engines and migrations: SQLite (embedded default, WAL) or PostgreSQL (server)."""

from __future__ import annotations

import logging
import queue
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, create_engine, event, inspect
from sqlalchemy.engine import make_url
from sqlalchemy.exc import (
    DBAPIError,
    DisconnectionError,
    InterfaceError,
    OperationalError,
    SQLAlchemyError,
)
from sqlalchemy.orm import Session, sessionmaker

from storage.errors import DatabaseMissingError

logger = logging.getLogger(__name__)

MIGRATIONS = Path(__file__).with_name("migrations")
SQLITE_BUSY_TIMEOUT_MS = 30_000
# How a DirectStatement waits for SQLite's write lock: tries again every BUSY_POLL seconds
# (SQLite's own busy handler sleeps 1, 2, 5, 10 ms and more), for up to BUSY_TIMEOUT.
BUSY_POLL = 0.0002
BUSY_TIMEOUT = 30.0


def sqlite_url(path: Path) -> str:
    return f"sqlite:///{Path(path).resolve()}"


def make_engine(url: str, **kwargs: Any) -> Engine:
    """An engine for `url`; SQLite connections get WAL, a busy timeout and foreign keys."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database
        if database and database != ":memory:":
            Path(database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000},
                               **kwargs)
        event.listen(engine, "connect", _sqlite_pragmas)
        # pysqlite's own transaction handling defers BEGIN; we emit BEGIN IMMEDIATE ourselves
        # for writes so two processes never deadlock upgrading a read lock.
        event.listen(engine, "begin", _sqlite_begin)
        return engine
    return create_engine(url, pool_pre_ping=True, **kwargs)


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    dbapi_conn.isolation_level = None  # autocommit at the driver; SQLAlchemy issues BEGIN
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    # FULL: a commit is on disk before we answer the sender (success means stored).
    cur.execute("PRAGMA synchronous=FULL")
    cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def _sqlite_begin(conn: Any) -> None:
    options = conn.get_execution_options()
    if options.get(READ_ONLY):
        conn.exec_driver_sql("BEGIN")
    elif options.get(POLL_WRITE_LOCK):
        _begin_immediate_polling(conn.connection.dbapi_connection)
    else:
        conn.exec_driver_sql("BEGIN IMMEDIATE")


READ_ONLY = "ichtriage_read_only"
# For the receiving processes' write transactions: wait for SQLite's write lock by trying
# again every BUSY_POLL seconds (`_polling_while_locked`, as DirectStatement), not in SQLite's busy
# handler, which sleeps 1, 2, 5, 10 ms and more between tries for a lock held about 1 ms.
POLL_WRITE_LOCK = "ichtriage_poll_write_lock"


def _begin_immediate_polling(dbapi_conn: sqlite3.Connection) -> None:
    """BEGIN IMMEDIATE, tried every BUSY_POLL seconds for up to BUSY_TIMEOUT.

    Raises sqlite3.OperationalError (database is locked) when the lock stays taken."""
    cursor = dbapi_conn.cursor()
    cursor.execute("PRAGMA busy_timeout=0")
    try:
        _polling_while_locked(lambda: cursor.execute("BEGIN IMMEDIATE"))
    finally:
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.close()


_T = TypeVar("_T")


def _polling_while_locked(run: Callable[[], _T]) -> _T:
    """`run()`, tried again every BUSY_POLL seconds while SQLite answers SQLITE_BUSY, for up
    to BUSY_TIMEOUT; then its sqlite3.OperationalError (database is locked) is raised."""
    deadline = time.monotonic() + BUSY_TIMEOUT
    while True:
        try:
            return run()
        except sqlite3.OperationalError as exc:
            if exc.sqlite_errorcode != sqlite3.SQLITE_BUSY or time.monotonic() > deadline:
                raise
        time.sleep(BUSY_POLL)


def sqlite_driver_connection(engine: Engine) -> sqlite3.Connection:
    """A connection of the driver itself to `engine`'s SQLite database, set up as the engine's
    own are (autocommit at the driver, WAL, FULL sync, busy timeout, foreign keys), for the
    hot statements that go around SQLAlchemy. Usable from any thread, one at a time."""
    cargs, cparams = engine.dialect.create_connect_args(engine.url)
    conn = sqlite3.connect(cargs[0], timeout=SQLITE_BUSY_TIMEOUT_MS / 1000,
                           check_same_thread=False, uri=bool(cparams.get("uri")))
    _sqlite_pragmas(conn, None)
    return conn


class DirectStatement:
    """One hot write statement on SQLite, run by the driver itself in autocommit.

    Without BEGIN, SQLite takes its write lock inside the statement and commits before the
    statement returns, so the lock is never held while a Python thread waits for the GIL
    (with four associations, BEGIN IMMEDIATE had waited 4-8 ms per instance for a lock held
    1 ms). Going around SQLAlchemy's connection, events and result set-up took the instance
    insert from 26 % of the receiving process's GIL samples to 6 %. The SQL text, parameter
    order and value conversions are SQLAlchemy's own, compiled once. One statement, so one
    transaction: what must change together goes in one statement (or a trigger).
    """

    def __init__(self, engine: Engine, statement: Any) -> None:
        compiled = statement.compile(dialect=engine.dialect)
        dialect = engine.dialect
        self._engine = engine
        self._sql = str(compiled)
        self._params = [(name, compiled.binds[name].type.dialect_impl(dialect)
                         .bind_processor(dialect)) for name in compiled.positiontup or ()]
        self._idle: queue.SimpleQueue[sqlite3.Connection] = queue.SimpleQueue()
        event.listen(engine, "engine_disposed", self._close_idle)

    def _close_idle(self, _engine: Engine) -> None:
        """Close the driver connections not in use, as `engine.dispose()` does its own."""
        while True:
            try:
                self._idle.get_nowait().close()
            except queue.Empty:
                return

    def execute(self, values: dict[str, Any]) -> tuple[int | None, int]:
        """Run the statement with `values`; the cursor's lastrowid and rowcount."""
        params = [convert(values[name]) if convert else values[name]
                  for name, convert in self._params]
        try:
            conn = self._idle.get_nowait()
        except queue.Empty:
            conn = sqlite_driver_connection(self._engine)
            conn.execute("PRAGMA busy_timeout=0")
        try:
            cursor = _polling_while_locked(lambda: conn.execute(self._sql, params))
            return cursor.lastrowid, cursor.rowcount
        finally:
            self._idle.put(conn)


def is_unavailable(exc: BaseException) -> bool:
    """Whether `exc`, or an exception it was raised from, says the database cannot be reached
    or used for now (a server restarting or down, a cut connection, SQLite's lock held too
    long): work that met it is tried again later, not marked failed. Errors of the statement
    itself (IntegrityError, ProgrammingError...) are not."""
    seen: set[int] = set()
    error: BaseException | None = exc
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OperationalError | InterfaceError | DisconnectionError):
            return True
        if isinstance(error, DBAPIError) and error.connection_invalidated:
            return True
        error = error.__cause__ or error.__context__
    return False


def reader(engine: Engine) -> Engine:
    """The engine for read-only work: on SQLite its transactions take no write lock, so
    polling readers never hold up the receiving processes."""
    return engine.execution_options(**{READ_ONLY: True})


def session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


def alembic_config(url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    cfg.attributes["configure_logger"] = False
    return cfg


def upgrade(url: str, revision: str = "head") -> None:
    """Bring the database at `url` to `revision` (creating it when new)."""
    engine = make_engine(url)
    try:
        with engine.begin() as conn:
            cfg = alembic_config(url)
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, revision)
    finally:
        engine.dispose()


def open_existing(url: str) -> Engine:
    """An engine for a database that must exist already at the newest schema, for commands
    that only read: nothing is created or migrated.

    Raises DatabaseMissingError naming the database and what to do.
    """
    parsed = make_url(url)
    shown = parsed.render_as_string(hide_password=True)
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database
        if not database or database == ":memory:" or not Path(database).is_file():
            raise DatabaseMissingError(f"no database at {database}: is --data-dir (or "
                                       "--db-url) right? `ichtriage serve` creates it")
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            current = MigrationContext.configure(conn).get_current_revision()
    except SQLAlchemyError as exc:
        engine.dispose()
        raise DatabaseMissingError(f"cannot open the database {shown}: "
                                   f"{exc.__class__.__name__}: {getattr(exc, 'orig', None) or exc}") from exc
    head = ScriptDirectory.from_config(alembic_config(url)).get_current_head()
    if current != head:
        engine.dispose()
        raise DatabaseMissingError(f"the database {shown} is at schema {current or 'none'}, "
                                   f"this node needs {head}: run `ichtriage db upgrade`")
    return engine


def current_tables(engine: Engine) -> set[str]:
    return set(inspect(engine).get_table_names())

"""Shared fixtures: the two databases every storage and node test runs against."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url

from storage.db import make_engine, upgrade
from tests import peers

_counter = itertools.count()


@pytest.fixture(scope="session")
def postgres_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One real PostgreSQL server for the session, on loopback, stopped at the end."""
    if not peers.have_postgres():
        peers.missing_peer("PostgreSQL")
    with peers.postgres_server(tmp_path_factory.mktemp("pg")) as url:
        yield url


def _fresh_postgres_database(server_url: str) -> str:
    name = f"t{next(_counter)}"
    admin = create_engine(server_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return make_url(server_url).set(database=name).render_as_string(hide_password=False)


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A new, migrated, empty database: a SQLite file, or a database on the test server."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'index.db'}"
    else:
        url = _fresh_postgres_database(request.getfixturevalue("postgres_url"))
    upgrade(url)
    return url


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    eng = make_engine(db_url)
    yield eng
    eng.dispose()

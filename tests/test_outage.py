"""What counts as the database being away, and how a loop says so (node.outage)."""

from __future__ import annotations

import logging

import pytest
from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError

from node.outage import DatabaseOutage, is_unavailable
from storage.errors import DatabaseError


def refused() -> OperationalError:
    return OperationalError("SELECT 1", {}, ConnectionRefusedError("connection refused"))


def test_a_refused_connection_is_an_outage_a_bad_statement_is_not() -> None:
    assert is_unavailable(refused())
    assert not is_unavailable(IntegrityError("INSERT", {}, ValueError("duplicate key")))
    assert not is_unavailable(ProgrammingError("SELEC", {}, ValueError("syntax error")))
    assert not is_unavailable(ValueError("no database involved"))


def test_an_outage_wrapped_by_storage_is_still_an_outage() -> None:
    try:
        try:
            raise refused()
        except OperationalError as exc:
            raise DatabaseError("indexing 1.2.3 failed") from exc
    except DatabaseError as wrapped:
        assert is_unavailable(wrapped)


def test_an_outage_is_said_once_and_its_end_once(caplog: pytest.LogCaptureFixture) -> None:
    outage = DatabaseOutage(logging.getLogger("test.outage"), "worker w1", first=0.5,
                            longest=2.0)
    with caplog.at_level(logging.INFO, logger="test.outage"):
        waits = []
        for _ in range(4):
            outage.failed(refused())
            waits.append(outage.wait_seconds())
        outage.ok()
        outage.ok()
    assert waits == [0.5, 1.0, 2.0, 2.0]
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2
    assert lines[0].startswith("worker w1: database unavailable (OperationalError: connection "
                               "refused)")
    assert lines[1].startswith("worker w1: database back after") and "(4 tries)" in lines[1]
    assert outage.tries == 0 and outage.wait_seconds() == 0.5


def test_the_waits_are_checked() -> None:
    with pytest.raises(ValueError, match="first"):
        DatabaseOutage(logging.getLogger("x"), "x", first=3.0, longest=1.0)

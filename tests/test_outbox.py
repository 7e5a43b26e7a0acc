"""The outbox's retry bookkeeping on both databases: backoff after a failed try, and the
restart's "try every pending delivery now"."""

from __future__ import annotations

from sqlalchemy import Engine

from storage.models import DeliveryStatus
from storage.outbox import Outbox
from storage.retry import RetryPolicy


def test_a_failed_delivery_waits_its_backoff_until_a_restart_makes_it_due(
        engine: Engine) -> None:
    outbox = Outbox(engine, retry=RetryPolicy(max_attempts=5, backoff_seconds=600.0))
    with engine.begin() as conn:
        assert outbox.add(conn, sop_uid="1.2.3", file_path="a/b/1.2.3.dcm",
                          destinations=["PACS@127.0.0.1:104", "ARCHIVE@127.0.0.1:105"]) == 2
        assert outbox.add(conn, sop_uid="1.2.3", file_path="a/b/1.2.3.dcm",
                          destinations=["PACS@127.0.0.1:104"]) == 0  # queued already
    first, second = outbox.due()
    assert outbox.failed(first, "PACS down") is DeliveryStatus.PENDING
    outbox.sent(second)
    assert outbox.due() == []  # the failed one waits 600 s, the sent one is done
    assert outbox.due_now() == 1
    [again] = outbox.due()
    assert (again.id, again.attempts) == (first.id, 1)
    assert outbox.due_now() == 0  # due already: nothing to change

"""A database outage as the node's loops report it: one warning when it begins and one line
when it ends, not a traceback per try, and a growing wait between tries.

The node's periodic work (node.scheduler.Polls) and its triage workers meet the same outage
when PostgreSQL restarts; each keeps its own `DatabaseOutage`.
"""

from __future__ import annotations

import logging
import time

from storage.db import is_unavailable

__all__ = ["DatabaseOutage", "is_unavailable"]


class DatabaseOutage:
    """The state of the database as one loop (`what`) sees it.

    `failed(exc)` after a try that met an unavailable database (`is_unavailable`), `ok()`
    after one that worked; `wait_seconds()` is how long to wait before the next try: `first`
    seconds, doubled after each failed try, at most `longest`.
    """

    def __init__(self, logger: logging.Logger, what: str, *, first: float = 0.5,
                 longest: float = 5.0) -> None:
        if not 0 < first <= longest:
            raise ValueError(f"first ({first}) must be > 0 and <= longest ({longest})")
        self.logger = logger
        self.what = what
        self.first = first
        self.longest = longest
        self.tries = 0  # failed tries in a row
        self._since = 0.0

    def failed(self, exc: BaseException) -> None:
        if self.tries == 0:
            self._since = time.monotonic()
            reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()
            self.logger.warning("%s: database unavailable (%s: %s); trying again until it "
                                "is back", self.what, type(exc).__name__,
                                reason[0] if reason else "")
        self.tries += 1

    def ok(self) -> None:
        if self.tries:
            self.logger.info("%s: database back after %.1f s (%d tries)", self.what,
                             time.monotonic() - self._since, self.tries)
        self.tries = 0

    def wait_seconds(self) -> float:
        return min(self.first * 2 ** max(self.tries - 1, 0), self.longest)

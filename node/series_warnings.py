"""pydicom's complaints about a series, said once per series instead of once per element.

pydicom warns (and logs on its "pydicom" logger) each time it decodes a value under a faulty
header, e.g. a misspelt Specific Character Set: 24 slices gave 122 lines. While a worker
thread reads a series inside `once_per_series`, those messages are counted instead, and each
distinct one is logged once at the end with the series UID and its count. pydicom is told
nothing: its logger gets a `logging.Filter` (the logging module's public seam), active only
for the thread inside the block; the `warnings` capture uses `warnings.catch_warnings`, which
is process-wide, so it is meant for the node's default of one triage thread per process.
"""

from __future__ import annotations

import logging
import threading
import warnings
from collections import Counter, OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager

logger = logging.getLogger(__name__)

_state = threading.local()


class _CountInThread(logging.Filter):
    """Drops the records of a thread inside `once_per_series`, counting their messages."""

    def filter(self, record: logging.LogRecord) -> bool:
        counts: Counter[str] | None = getattr(_state, "counts", None)
        if counts is None:
            return True
        counts[record.getMessage()] += 1
        return False


_FILTER = _CountInThread()


@contextmanager
def counted(library: str = "pydicom") -> Iterator[Counter[str]]:
    """Inside the block, `library`'s log records of this thread are counted (by message) in
    the Counter it yields instead of being logged. Other threads log as usual."""
    counts: Counter[str] = Counter()
    library_logger = logging.getLogger(library)
    if _FILTER not in library_logger.filters:
        library_logger.addFilter(_FILTER)
    outer = getattr(_state, "counts", None)
    _state.counts = counts
    try:
        yield counts
    finally:
        _state.counts = outer


@contextmanager
def once_per_series(series_uid: str, library: str = "pydicom") -> Iterator[None]:
    """Inside the block, `library`'s log records and warnings of this thread are counted;
    each distinct message is logged once afterwards, naming the series (never a patient)."""
    with counted(library) as counts:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield
    for warning in caught:
        message = str(warning.message)
        counts[message] = max(counts[message], 1)  # the same message was usually logged too
    for message, n in counts.items():
        logger.warning("series %s: %s (%d time(s) while reading it)", series_uid, message, n)


class SaidOncePerSeries:
    """For a receiving process, whose association threads decode one instance at a time:
    each distinct message is logged the first time it comes for a series, and then not
    again while the series is among the `remember` most recent ones (bounded memory)."""

    def __init__(self, remember: int = 256) -> None:
        if remember < 1:
            raise ValueError(f"remember must be >= 1, got {remember}")
        self._seen: OrderedDict[tuple[str, str], None] = OrderedDict()
        self._remember = remember
        self._lock = threading.Lock()

    def say(self, series_uid: str, counts: Counter[str]) -> None:
        for message in counts:
            key = (series_uid, message)
            with self._lock:
                if key in self._seen:
                    self._seen.move_to_end(key)
                    continue
                self._seen[key] = None
                if len(self._seen) > self._remember:
                    self._seen.popitem(last=False)
            logger.warning("series %s: %s (said once per series; the receiving process "
                           "decodes each instance of it alike)", series_uid, message)

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
from collections import Counter
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
def once_per_series(series_uid: str, library: str = "pydicom") -> Iterator[None]:
    """Inside the block, `library`'s log records and warnings of this thread are counted;
    each distinct message is logged once afterwards, naming the series (never a patient)."""
    counts: Counter[str] = Counter()
    library_logger = logging.getLogger(library)
    if _FILTER not in library_logger.filters:
        library_logger.addFilter(_FILTER)
    _state.counts = counts
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield
    finally:
        _state.counts = None
    for warning in caught:
        message = str(warning.message)
        counts[message] = max(counts[message], 1)  # the same message was usually logged too
    for message, n in counts.items():
        logger.warning("series %s: %s (%d time(s) while reading it)", series_uid, message, n)

"""once_per_series: pydicom's repeated complaints about one series become one line."""

from __future__ import annotations

import logging
import threading
import warnings

import pytest

from node.series_warnings import SaidOncePerSeries, counted, once_per_series

MESSAGE = "Incorrect value for Specific Character Set 'ISO IR 192' - assuming 'ISO_IR 192'"


def test_repeats_inside_the_block_are_said_once_with_their_count(
        caplog: pytest.LogCaptureFixture) -> None:
    library = logging.getLogger("pydicom")
    with caplog.at_level(logging.WARNING), once_per_series("1.2.3"):
        for _ in range(5):
            library.warning(MESSAGE)
            warnings.warn(MESSAGE, UserWarning, stacklevel=1)
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [f"series 1.2.3: {MESSAGE} (5 time(s) while reading it)"]
    assert caplog.records[0].name == "node.series_warnings"


def test_other_threads_and_later_records_are_not_held_back(
        caplog: pytest.LogCaptureFixture) -> None:
    library = logging.getLogger("pydicom")
    with caplog.at_level(logging.WARNING), once_per_series("1.2.3"):
        other = threading.Thread(target=library.warning, args=("from another thread",))
        other.start()
        other.join()
    library.warning("after the block")
    assert [r.getMessage() for r in caplog.records] == ["from another thread", "after the block"]


def test_a_receiving_process_says_each_message_once_per_series(
        caplog: pytest.LogCaptureFixture) -> None:
    library = logging.getLogger("pydicom")
    said = SaidOncePerSeries(remember=2)
    with caplog.at_level(logging.WARNING):
        for series in ("1.1", "1.1", "1.2", "1.1", "1.3", "1.4", "1.1"):
            with counted() as counts:  # one instance decoded
                library.warning(MESSAGE)
                library.warning(MESSAGE)
            assert counts == {MESSAGE: 2}
            said.say(series, counts)
    said_for = [r.getMessage().split(":")[0] for r in caplog.records]
    # 1.1 is said again only once it has dropped out of the two remembered series
    assert said_for == ["series 1.1", "series 1.2", "series 1.3", "series 1.4", "series 1.1"]
    with pytest.raises(ValueError, match="remember"):
        SaidOncePerSeries(remember=0)

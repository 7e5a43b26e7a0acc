"""Failure drills of load and time, short versions of tests/benchmarks/bench_flood.py and
bench_longlife.py: eight scanners at once drop nothing; thousands of short associations (and
bare connections, as a load balancer's health checks make) leak no thread, descriptor or
association count."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests import peers
from tests.benchmarks.bench_flood import SUCCESS, Sampler, flood, kept
from tests.benchmarks.bench_longlife import Echo, knock, repeat, settled
from tests.nodeproc import running_node, wait_for
from tests.processes import node_usage, table

pytestmark = [pytest.mark.slow, peers.needs(peers.have_dcmtk(), "DCMTK")]

MIB = 1024  # KiB


def test_a_flood_of_eight_associations_drops_nothing_and_memory_stays_bounded(
        tmp_path: Path) -> None:
    per_series = 20
    with running_node(tmp_path / "node") as node:
        started = node_usage(node.proc.pid)
        with Sampler(node.proc.pid, interval=0.5):
            sent = flood(node.port, tmp_path / "out", seconds=12, associations=8,
                         per_association=per_series, size=256)
        ended = node_usage(node.proc.pid)
        rows, files = kept(node)
        series = {str(uid): int(str(n)) for uid, n in
                  node.query("select series_uid, instance_count from series")}
    acknowledged = sent.acknowledged()
    assert sent.refused_associations == 0
    assert set(sent.answers.values()) == {SUCCESS}  # nothing refused, nothing unanswered
    assert len(sent.series) >= 8  # each sender finished a series at least
    assert rows == acknowledged and files == acknowledged  # nothing dropped, nothing extra
    assert series == {uid: per_series for uid in sent.series}
    assert set(ended) == set(started)  # no receiving process died and was replaced
    # About 130 KB of pixel data per instance, well over 100 MB in all: a process that kept
    # what it received would grow by tens of MiB. The flood's own working set is a few MiB.
    report = "\n".join(table(started, ended))
    for pid, now in ended.items():
        assert now.rss_kib - started[pid].rss_kib < 48 * MIB, report


def test_short_associations_and_health_checks_leak_no_thread_or_descriptor(
        tmp_path: Path) -> None:
    """A thousand associate-echo-release and a thousand connect-and-close after a warm-up:
    every process of the node holds the threads and descriptors it held before (a little
    slack for a thread still ending), its memory has not grown with the count, every
    association was recorded as released, and the node still serves."""
    count, warm_up = 1000, 100
    with running_node(tmp_path) as node:
        echo = Echo(node.port)
        repeat(echo, warm_up)
        repeat(lambda: knock(node.port), warm_up)
        warm = settled(node)
        repeat(echo, count)
        repeat(lambda: knock(node.port), count)
        after = settled(node)
        echo()
        report = "\n".join(table(warm, after))
        assert set(after) == set(warm), report  # the same processes, none replaced
        for pid, was in warm.items():
            now = after[pid]
            assert now.fds <= was.fds + 4, report
            assert now.threads <= was.threads + 2, report  # APScheduler's pool grows lazily
            assert now.rss_kib - was.rss_kib < 32 * MIB, report
        # the end of the last one is recorded a moment after its release was answered
        wait_for(lambda: node.query("select state, count(*) from association group by state")
                 == [("released", warm_up + count + 1)], timeout=10,
                 what="every association recorded as released")
        assert "Traceback" not in node.log_text()

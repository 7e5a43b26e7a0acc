"""A node killed with SIGKILL (the whole process tree) and started again on the same data: its
series is triaged within seconds of the restart, not after the dead worker's lease."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest

from ml.phantom import write_series
from tests import peers
from tests.nodeproc import NodeProcess, running_node, wait_for

pytestmark = [pytest.mark.slow]


def kill_tree(node: NodeProcess) -> None:
    """SIGKILL the node and every process it started, as a power cut or the OOM killer would."""
    children = subprocess.run(["pgrep", "-P", str(node.proc.pid)], capture_output=True,
                              text=True).stdout.split()
    for pid in [node.proc.pid, *map(int, children)]:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    node.proc.wait(timeout=10)


def test_a_job_running_at_a_sigkill_is_done_soon_after_the_restart(tmp_path: Path) -> None:
    # The worker loads the model, then reads and classifies 24 full-size slices: seconds in
    # which the job is "running", and the kill comes then. The lease is made long (600 s):
    # only the restart's recovery can hand the job on in time.
    series = write_series(tmp_path / "in", seed=11, slices=24, size=512, subtypes=())
    lease = {"ICHTRIAGE_JOB_LEASE_SECONDS": "600"}
    with running_node(tmp_path, workers=1, settle=0.3, env=lease) as node:
        held = peers.run_storescu(series.paths[0].parent, node.port, aet="CT1",
                                  called_aet="ICHTRIAGE")
        assert held.returncode == 0, held.stderr
        wait_for(lambda: node.query("select status from job") in ([("running",)], [("done",)]),
                 timeout=60, what="the job to start")
        kill_tree(node)
    leftover = node.query("select status, worker from job")
    assert leftover[0][0] == "running"
    with running_node(tmp_path, workers=1, settle=0.3, env=lease) as again:
        wait_for(lambda: again.query("select status from job") == [("done",)], timeout=90,
                 what="the job done after the restart (its lease has 600 s to run)")
        log = again.log_text()
        assert "1 jobs of ended workers queued again" in log
        assert again.query("select count(*) from triage_result") == [(1,)]
    assert not list((tmp_path / "var" / "data").rglob(".incoming-*"))

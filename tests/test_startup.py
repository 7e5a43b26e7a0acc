"""An operator's mistake costs one clear line at start and a non-zero exit; read-only commands
create nothing; periodic work never overlaps."""

from __future__ import annotations

import logging
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from node.scheduler import Polls

pytestmark = [pytest.mark.slow]


def run_node(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "node", *args], capture_output=True,
                          text=True, timeout=timeout)


def not_a_checkpoint(tmp_path: Path) -> str:
    path = tmp_path / "broken.pt"
    path.write_bytes(b"PK\x03\x04 not really a checkpoint")
    return str(path)


@pytest.mark.parametrize(("flags", "named"), [
    (lambda tmp: ["--data-dir", str(tmp / "afile" / "var")], "data_dir"),
    (lambda tmp: ["--db-url", "postgresql+psycopg://nobody@127.0.0.1:1/none"], "db_url"),
    (lambda tmp: ["--model", str(tmp / "missing.pt")], "model"),
    (lambda tmp: ["--model", not_a_checkpoint(tmp)], "model"),
    (lambda tmp: ["--device", "cuda"], "device cuda"),
    (lambda tmp: ["--device", "quantum"], "device 'quantum'"),
    (lambda tmp: ["--device", "cuda:99", "--workers", "0"], "device cuda:99"),
], ids=["data-dir-not-a-folder", "database-down", "model-missing", "model-broken",
        "no-cuda-here", "device-typo", "no-such-cuda-without-workers"])
def test_a_mistake_is_one_clear_line_and_a_non_zero_exit(tmp_path: Path, flags: object,
                                                          named: str) -> None:
    (tmp_path / "afile").write_text("a file where a folder should be")
    args = flags(tmp_path)  # type: ignore[operator]
    if "--data-dir" not in args:
        args += ["--data-dir", str(tmp_path / "var")]
    done = run_node("serve", "--port", "0", "--http-port", "0", *args)
    assert done.returncode == 1
    output = done.stdout + done.stderr
    errors = [line for line in output.splitlines() if " ERROR " in line]
    assert len(errors) == 1 and f"cannot start: {named}" in errors[0], output
    assert "Traceback" not in output and "ready:" not in output


def test_worklist_with_a_mistyped_data_dir_creates_nothing(tmp_path: Path) -> None:
    typo = tmp_path / "vra"
    done = run_node("worklist", "--data-dir", str(typo))
    assert done.returncode == 1
    assert f"no database at {typo / 'ichtriage.db'}" in done.stderr
    assert "Traceback" not in done.stderr
    assert not typo.exists()


def test_version() -> None:
    done = run_node("--version")
    assert done.returncode == 0
    assert done.stdout.startswith("ichtriage 0.1.0 (pynetdicom 3.0.4")


def test_polls_never_overlap_nor_warn_and_survive_a_failure(
        caplog: pytest.LogCaptureFixture) -> None:
    runs: list[tuple[float, float]] = []
    overlapping = threading.Event()
    busy = threading.Lock()

    def slow() -> None:  # longer than the interval: APScheduler alone would skip and warn
        if not busy.acquire(blocking=False):
            overlapping.set()
            return
        try:
            started = time.monotonic()
            time.sleep(0.08)
            runs.append((started, time.monotonic()))
            if len(runs) == 2:
                raise RuntimeError("a bad moment")
        finally:
            busy.release()

    polls = Polls(0.02)
    polls.add(slow, "slow")
    with caplog.at_level(logging.WARNING):
        polls.start()
        deadline = time.monotonic() + 10
        while len(runs) < 5 and time.monotonic() < deadline:
            time.sleep(0.02)
        polls.shutdown()
    assert len(runs) >= 5 and not overlapping.is_set()
    assert all(later[0] >= earlier[1] for earlier, later in zip(runs, runs[1:], strict=False))
    assert "periodic slow failed" in caplog.text  # logged, and the runs went on
    assert "maximum number of running instances" not in caplog.text


def test_polls_shut_down_while_a_run_is_in_progress() -> None:
    """APScheduler holds its job store lock while shutdown waits for running jobs; a run that
    ends then must not try to add its successor (both would wait for ever)."""
    running = threading.Event()

    def slow() -> None:
        running.set()
        time.sleep(0.5)

    polls = Polls(0.01)
    polls.add(slow, "slow")
    polls.start()
    assert running.wait(5)
    stopper = threading.Thread(target=polls.shutdown)
    stopper.start()
    stopper.join(timeout=10)
    assert not stopper.is_alive()


def test_a_disk_below_min_free_mb_is_said_at_start(tmp_path: Path,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    from node.config import Settings
    from node.startup import check_data_dir

    with caplog.at_level(logging.WARNING, logger="node.startup"):
        check_data_dir(Settings(data_dir=tmp_path / "roomy", min_free_mb=0))
        assert caplog.records == []
        check_data_dir(Settings(data_dir=tmp_path / "full", min_free_mb=2**40))  # 1 EiB
    (record,) = caplog.records
    assert "less than min_free_mb (1099511627776)" in record.getMessage()
    assert "refused (0xA700)" in record.getMessage()

"""Scheduled retraining: off unless `retrain_cron` is set. At each tick the supervisor runs
`ichtriage admin retrain` (node.cli.retrain) as a child process, on `retrain_device`, at lower
CPU priority, and waits for it in a scheduler thread: triage never waits for it, and the
retraining lock in the database keeps it to one run at a time, across processes and restarts.
The run trains only when `retrain_min_new_labels` feedback labels are new since the last
retraining, and then on the node's feedback export as well (`--with-feedback`). A run that
was killed (or whose node was) is resumed from its last finished epoch at the next tick.
"""

from __future__ import annotations

import logging
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

from apscheduler.schedulers.base import BaseScheduler
from apscheduler.triggers.cron import CronTrigger

from node.config import ConfigError, Settings

logger = logging.getLogger(__name__)

JOB_ID = "retrain"
FINISHED = "finished"  # marks a tick's folder once its run ended by itself, well or not


def retrain_command(settings: Settings, *, out: Path) -> list[str]:
    """The `admin retrain` command line a tick runs."""
    def path(value: Path | None) -> str:
        assert value is not None  # Settings checks them when retrain_cron is set
        return str(value)

    return [sys.executable, "-m", "node", "admin", "retrain",
            "--arch", settings.retrain_arch, "--epochs", str(settings.retrain_epochs),
            "--dicom-dir", path(settings.retrain_dicom_dir),
            "--labels", path(settings.retrain_labels),
            "--heldout-dir", path(settings.retrain_heldout_dir),
            "--heldout-labels", path(settings.retrain_heldout_labels),
            "--metric", settings.retrain_metric, "--device", settings.retrain_device,
            "--with-feedback", "--min-new-labels", str(settings.retrain_min_new_labels),
            "--out", str(out), "--data-dir", str(settings.data_dir),
            "--db-url", settings.database_url, "--log-level", settings.log_level]


def tick_folder(root: Path) -> tuple[Path, bool]:
    """Where a tick's run writes, and whether it resumes there: the newest run folder that
    has no FINISHED mark (its run, or the node, was killed) and holds the `last.pt` of a
    finished epoch is continued; otherwise a new folder named after the time (UTC)."""
    runs = sorted(p for p in root.glob("*T*Z") if p.is_dir()) if root.is_dir() else []
    if runs and not (runs[-1] / FINISHED).exists() and (runs[-1] / "last.pt").is_file():
        return runs[-1], True
    return root / f"{datetime.now(UTC):%Y%m%dT%H%M%SZ}", False


def outcome(done: subprocess.CompletedProcess[str]) -> str:
    """The line of an `admin retrain` run that says how it ended: when it failed or was
    refused, its own one-line message on stderr (`ichtriage admin retrain: ...`), or the last
    line of a traceback; else its last line of output (the gate's verdict, or why it
    skipped)."""
    said = [line for line in done.stderr.splitlines() if line.startswith("ichtriage ")]
    if done.returncode != 0 and said:
        return said[-1]
    errors = done.stderr.strip().splitlines()
    if done.returncode not in (0, 4) and errors:  # 4: kept, skipped or busy, said on stdout
        return errors[-1]
    lines = (done.stdout.strip() or done.stderr.strip()).splitlines()
    return lines[-1] if lines else ""


def schedule_retraining(scheduler: BaseScheduler, settings: Settings) -> bool:
    """Add the retraining tick to `scheduler`; False when retrain_cron is empty (off)."""
    if not settings.retrain_cron:
        return False
    try:
        trigger = CronTrigger.from_crontab(settings.retrain_cron, timezone="UTC")
    except ValueError as exc:
        raise ConfigError(f"retrain_cron: {settings.retrain_cron!r}: {exc}") from exc

    def tick() -> None:
        out, resume = tick_folder(settings.data_dir / "retraining")
        if resume:
            logger.info("scheduled retraining resumes the run cut off in %s", out)
        done = subprocess.run([*retrain_command(settings, out=out), *(["--resume"] * resume)],
                              capture_output=True, text=True, check=False)
        logger.info("scheduled retraining ended (exit %d): %s", done.returncode, outcome(done))
        if done.returncode >= 0 and out.is_dir():  # it ended by itself (a signal's exit
            (out / FINISHED).touch()                 # status is negative): not resumed

    scheduler.add_job(tick, trigger, id=JOB_ID, max_instances=1, coalesce=True)
    logger.info("retraining scheduled: %s (UTC), on %s", settings.retrain_cron,
                settings.retrain_device)
    return True

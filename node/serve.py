"""`ichtriage serve`: the supervisor process."""

from __future__ import annotations

import logging
import signal
import threading
from types import FrameType

from sqlalchemy.engine import make_url

from node.config import Settings
from node.dicom.eligibility import EligibilityRules
from node.dicom.receiver import ReceiverPool
from node.logs import configure_logging
from node.scheduler import SeriesMonitor, start_scheduler
from storage.db import make_engine, upgrade
from storage.jobs import JobQueue
from storage.series import SeriesIndex

logger = logging.getLogger(__name__)


def serve(settings: Settings) -> int:
    configure_logging(settings.log_level)
    settings.files_dir.mkdir(parents=True, exist_ok=True)
    url = settings.database_url
    logger.info("database %s", make_url(url).render_as_string(hide_password=True))
    upgrade(url)
    engine = make_engine(url)
    if not settings.allow_ae and settings.bind not in ("127.0.0.1", "::1", "localhost"):
        logger.warning("listening on %s and accepting any calling AE title: set allow_ae",
                       settings.bind)

    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        logger.info("%s received: stopping", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    pool = ReceiverPool(settings)
    try:
        host, port = pool.start()
    except OSError as exc:
        logger.error("cannot listen on %s:%d: %s", settings.bind, settings.port, exc.strerror)
        engine.dispose()
        return 1
    monitor = SeriesMonitor(
        SeriesIndex(engine), JobQueue(engine),
        EligibilityRules.create(min_slices=settings.min_slices,
                                body_parts=settings.eligible_body_parts),
        settle_seconds=settings.settle_seconds)
    scheduler = start_scheduler(monitor, interval=settings.check_interval)
    tls = " over TLS" if settings.tls_cert else ""
    logger.info("ready: DICOM %s on %s:%d%s, %d receiving processes, data in %s",
                settings.ae_title, host, port, tls, settings.receiver_count,
                settings.data_dir.resolve())
    try:
        stop.wait()
    finally:
        pool.stop()
        scheduler.shutdown(wait=True)
        engine.dispose()
        logger.info("stopped")
    return 0

"""`ichtriage serve` and `ichtriage worker`: the supervisor process and its services."""

from __future__ import annotations

import logging
import signal
import threading
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from apscheduler.schedulers.background import BackgroundScheduler
from sqlalchemy import Engine
from sqlalchemy.engine import make_url

from ml.shipped import shipped_checkpoint
from node.config import Settings
from node.dicom.eligibility import EligibilityRules
from node.dicom.receiver import ReceiverPool
from node.logs import configure_logging
from node.scheduler import SeriesMonitor
from storage.db import make_engine, upgrade
from storage.files import FileStore
from storage.jobs import JobQueue, RetryPolicy
from storage.models import utcnow
from storage.series import SeriesIndex

logger = logging.getLogger(__name__)

def model_path(settings: Settings) -> Path:
    """The active model's checkpoint: the configured file, else the shipped demo model."""
    return Path(settings.model) if settings.model else shipped_checkpoint()


@dataclass
class Services:
    engine: Engine
    files: FileStore
    queue: JobQueue


def open_services(settings: Settings) -> Services:
    settings.files_dir.mkdir(parents=True, exist_ok=True)
    url = settings.database_url
    logger.info("database %s", make_url(url).render_as_string(hide_password=True))
    upgrade(url)
    engine = make_engine(url)
    files = FileStore(settings.files_dir, min_free_bytes=settings.min_free_mb * 1024 * 1024)
    queue = JobQueue(engine, lease_seconds=settings.job_lease_seconds,
                     retry=RetryPolicy(max_attempts=settings.job_max_attempts))
    return Services(engine, files, queue)


def _stop_on_signals() -> threading.Event:
    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        logger.info("%s received: stopping", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    return stop


def _start_triage(settings: Settings, services: Services, count: int,
                  stop: threading.Event) -> list[threading.Thread]:
    """Triage workers (threads sharing one loaded model) and the outbox sender."""
    from ml.volume import VolumeRules
    from node.triage.worker import ModelHolder, TriageWorker, start_workers
    from storage.instances import InstanceStore
    from storage.outbox import Outbox
    from storage.results import Results

    path = model_path(settings)
    if not path.exists():
        logger.error("model checkpoint %s not found: series are queued but not triaged "
                     "until a model is there (ichtriage admin train ... / --model FILE)", path)
    holder = ModelHolder(path, device=settings.device)
    outbox = Outbox(services.engine)
    store = InstanceStore(services.engine, services.files)
    destinations = [str(d) for d in settings.destinations]
    rules = VolumeRules(min_slices=settings.min_slices,
                        min_coverage_mm=settings.min_coverage_mm)

    def make(i: int) -> TriageWorker:
        return TriageWorker(results=Results(services.engine), queue=services.queue, store=store,
                            files=services.files, outbox=outbox, model=holder,
                            destinations=destinations, min_slices=settings.min_slices,
                            batch_size=settings.batch_size, volume_rules=rules)

    return start_workers(count, make, stop)


def _start_sender(settings: Settings, services: Services,
                  scheduler: BackgroundScheduler) -> None:
    from node.triage.sender import DeliverySender
    from storage.outbox import Outbox

    sender = DeliverySender(Outbox(services.engine), services.files, ae_title=settings.ae_title)
    scheduler.add_job(sender.run_once, "interval", seconds=settings.check_interval, id="outbox",
                      max_instances=1, coalesce=True, next_run_time=utcnow())


def serve(settings: Settings) -> int:
    configure_logging(settings.log_level)
    services = open_services(settings)
    if not settings.allow_ae and settings.bind not in ("127.0.0.1", "::1", "localhost"):
        logger.warning("listening on %s and accepting any calling AE title: set allow_ae",
                       settings.bind)
    stop = _stop_on_signals()
    pool = ReceiverPool(settings)
    try:
        host, port = pool.start()
    except OSError as exc:
        logger.error("cannot listen on %s:%d: %s", settings.bind, settings.port, exc.strerror)
        services.engine.dispose()
        return 1
    monitor = SeriesMonitor(
        SeriesIndex(services.engine), services.queue,
        EligibilityRules.create(min_slices=settings.min_slices,
                                body_parts=settings.eligible_body_parts),
        settle_seconds=settings.settle_seconds)
    scheduler = BackgroundScheduler(daemon=True)
    scheduler.add_job(monitor.run_once, "interval", seconds=settings.check_interval, id="settle",
                      max_instances=1, coalesce=True, next_run_time=utcnow())
    _start_sender(settings, services, scheduler)
    scheduler.start()
    workers = _start_triage(settings, services, settings.workers, stop)
    tls = " over TLS" if settings.tls_cert else ""
    logger.info("ready: DICOM %s on %s:%d%s, %d receiving processes, %d triage workers, "
                "data in %s", settings.ae_title, host, port, tls, settings.receiver_count,
                len(workers), settings.data_dir.resolve())
    try:
        stop.wait()
    finally:
        pool.stop()
        scheduler.shutdown(wait=True)
        for thread in workers:
            thread.join(timeout=60)
        services.engine.dispose()
        logger.info("stopped")
    return 0


def work(settings: Settings, count: int) -> int:
    """`ichtriage worker`: triage workers without the DICOM receiver, e.g. on a GPU host
    sharing the node's PostgreSQL database and file store. The node's `serve` keeps the
    scheduler and the outbox, so results are sent once."""
    configure_logging(settings.log_level)
    services = open_services(settings)
    stop = _stop_on_signals()
    workers = _start_triage(settings, services, count, stop)
    logger.info("ready: %d triage workers on %s", len(workers), settings.device)
    try:
        stop.wait()
    finally:
        for thread in workers:
            thread.join(timeout=60)
        services.engine.dispose()
        logger.info("stopped")
    return 0

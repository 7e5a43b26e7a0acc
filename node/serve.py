"""`ichtriage serve` and `ichtriage worker`: the supervisor process and its services."""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
from dataclasses import dataclass
from datetime import timedelta
from types import FrameType
from typing import TYPE_CHECKING

from sqlalchemy import Engine
from sqlalchemy.engine import make_url

from node.config import Settings
from node.dicom.eligibility import EligibilityRules
from node.dicom.receiver import ReceiverPool, ReceiverStartError
from node.http.errors import HttpStartError
from node.logs import configure_logging
from node.retraining import schedule_retraining
from node.scheduler import Polls, SeriesMonitor
from node.startup import (
    StartupError,
    check_all,
    check_device,
    load_model,
)
from storage.associations import AssociationLog
from storage.db import make_engine
from storage.files import QUARANTINE, FileStore
from storage.instances import InstanceStore
from storage.jobs import JobQueue
from storage.outbox import Outbox
from storage.retry import RetryPolicy
from storage.series import SeriesIndex

if TYPE_CHECKING:
    from node.http.server import HttpServer
    from node.triage.registry import ModelHolder

logger = logging.getLogger(__name__)

@dataclass
class Services:
    engine: Engine
    files: FileStore
    queue: JobQueue


def open_services(settings: Settings) -> Services:
    """The database, file store and job queue; `node.startup.check_all` has checked them."""
    url = settings.database_url
    logger.info("database %s", make_url(url).render_as_string(hide_password=True))
    engine = make_engine(url)
    files = FileStore(settings.files_dir, min_free_bytes=settings.min_free_mb * 1024 * 1024)
    queue = JobQueue(engine, lease_seconds=settings.job_lease_seconds,
                     retry=RetryPolicy(max_attempts=settings.job_max_attempts))
    return Services(engine, files, queue)


# Rows received this long before the newest one are checked for their file at start-up: the
# instances in flight at a crash were all received within seconds of each other.
RECONCILE_WINDOW = timedelta(minutes=10)


def _process_alive(pid: int) -> bool:
    """Whether a process `pid` runs here. This process holds no job yet when it starts: a job
    under its own pid is a former process's (pid 1 in a container, say)."""
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True


def recover(services: Services, *, files_too: bool) -> None:
    """Undo what a crash or SIGKILL left half-done, before anything receives or triages:
    jobs of this host's workers whose process is gone are queued again at once; with
    `files_too` (the node, not a stand-alone worker) temporary files of interrupted writes
    are removed, rows whose file never got its name are taken back, and pending deliveries
    are made due now (the node that sends them is starting). One log line each."""
    jobs = services.queue.reclaim_dead(socket.gethostname(), _process_alive)
    temporaries = rows = orphans = cut = 0
    if files_too:
        done = InstanceStore(services.engine, services.files).reconcile(RECONCILE_WINDOW)
        temporaries, rows = done.temporaries, len(done.rows_taken_back)
        orphans = len(done.files_quarantined)
        cut = AssociationLog(services.engine).close_left_open()
        waiting = Outbox(services.engine).due_now()
        if waiting:
            logger.info("%d pending deliveries were waiting for their next try: tried now",
                        waiting)
    if jobs or temporaries or rows or orphans or cut:
        logger.warning("recovered from an unclean stop: %d jobs of ended workers queued again "
                       "(or failed), %d temporary files removed, %d rows without their file "
                       "taken back, %d files without a row moved to %s, %d associations cut "
                       "off marked aborted", len(jobs), temporaries, rows, orphans,
                       QUARANTINE, cut)


def _stop_on_signals() -> threading.Event:
    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        logger.info("%s received: stopping", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    return stop


def _start_triage(settings: Settings, services: Services, count: int, holder: ModelHolder,
                  stop: threading.Event) -> list[threading.Thread]:
    """Triage workers: threads sharing one loaded model."""
    from ml.volume import VolumeRules
    from node.triage.worker import TriageWorker, start_workers
    from storage.results import Results
    from storage.worker_beats import WorkerBeats

    outbox = Outbox(services.engine, retry=settings.delivery_retry)
    beats = WorkerBeats(services.engine)
    store = InstanceStore(services.engine, services.files)
    destinations = [str(d) for d in settings.destinations]
    rules = VolumeRules(min_slices=settings.min_slices,
                        min_coverage_mm=settings.min_coverage_mm)

    def make(i: int) -> TriageWorker:
        return TriageWorker(results=Results(services.engine), queue=services.queue, store=store,
                            files=services.files, outbox=outbox, model=holder,
                            destinations=destinations, min_slices=settings.min_slices,
                            ae_title=settings.ae_title, batch_size=settings.batch_size,
                            volume_rules=rules, key_images=settings.key_images, beats=beats)

    return start_workers(count, make, stop)


def _start_sender(settings: Settings, services: Services, polls: Polls) -> None:
    from node.triage.sender import DeliverySender

    sender = DeliverySender(Outbox(services.engine, retry=settings.delivery_retry),
                            services.files, ae_title=settings.ae_title)
    polls.add(sender.run_once, "outbox")


def _model_words(holder: ModelHolder | None) -> str:
    """The active model as the ready line names it: registry name and version, architecture,
    the weights' sha256 (the card's; the registry also keeps the file's), code, device."""
    if holder is None:
        return "no model loaded"
    active = holder.get()
    card, entry = active.classifier.card, active.entry
    code = f", code {card.code_version}" if card.code_version else ""
    return (f"model {entry.name} {entry.version} ({card.architecture}, weights sha256 "
            f"{card.sha256[:12]}{code}) on {active.classifier.device}")


def _start_http(settings: Settings, services: Services,
                monitor: SeriesMonitor) -> tuple[HttpServer | None, str]:
    """The API and the page on http_bind:http_port (none when the port is 0); raises
    HttpStartError when it cannot listen."""
    if settings.http_port == 0:
        return None, "no HTTP"
    from node.http.context import WebContext
    from node.http.saliency import HeatMaps
    from node.http.server import HttpServer
    from storage.registry import ModelRegistry

    heat_maps = HeatMaps(ModelRegistry(services.engine, settings.models_dir),
                         device=settings.device)
    ctx = WebContext(services.engine, services.files, metrics=settings.metrics,
                     heat_maps=heat_maps, monitor=monitor)
    server = HttpServer(ctx, host=settings.http_bind, port=settings.http_port)
    host, port = server.start()
    return server, f"HTTP on {host}:{port}"


def serve(settings: Settings) -> int:
    configure_logging(settings.log_level)
    try:
        check_all(settings)
    except StartupError as exc:
        logger.error("cannot start: %s", exc)
        return 1
    services = open_services(settings)
    try:
        holder = load_model(settings, services.engine) if settings.workers > 0 else None
        if holder is None:  # the workers elsewhere register and load the model
            check_device(settings.device)  # the heat maps of the HTTP side run on it
    except StartupError as exc:
        logger.error("cannot start: %s", exc)
        services.engine.dispose()
        return 1
    recover(services, files_too=True)
    if not settings.allow_ae and settings.bind not in ("127.0.0.1", "::1", "localhost"):
        logger.warning("listening on %s and accepting any calling AE title: set allow_ae",
                       settings.bind)
    stop = _stop_on_signals()
    pool = ReceiverPool(settings)
    try:
        host, port = pool.start()
    except (OSError, ReceiverStartError) as exc:
        if isinstance(exc, ReceiverStartError):
            logger.error("cannot start: %s", exc)
        else:
            logger.error("cannot start: cannot listen on %s:%d (bind, port): %s",
                         settings.bind, settings.port, exc.strerror)
        pool.stop(grace=0)
        services.engine.dispose()
        return 1
    polls = Polls(settings.check_interval)
    workers: list[threading.Thread] = []
    http: HttpServer | None = None
    try:
        monitor = SeriesMonitor(
            SeriesIndex(services.engine), services.queue,
            EligibilityRules.create(min_slices=settings.min_slices,
                                    body_parts=settings.eligible_body_parts),
            settle_seconds=settings.settle_seconds,
            aborted_wait_seconds=settings.aborted_wait_seconds)
        polls.add(monitor.run_once, "settle")
        _start_sender(settings, services, polls)
        schedule_retraining(polls.scheduler, settings)
        polls.start()
        if holder is not None:
            workers = _start_triage(settings, services, settings.workers, holder, stop)
        http, web = _start_http(settings, services, monitor)
        tls = " over TLS" if settings.tls_cert else ""
        logger.info("ready: DICOM %s on %s:%d%s, %s, %d receiving processes, %d triage "
                    "workers, %s, data in %s", settings.ae_title, host, port, tls, web,
                    settings.receiver_count, len(workers), _model_words(holder),
                    settings.data_dir.resolve())
        stop.wait()
        return 0
    except HttpStartError as exc:
        logger.error("cannot start: %s (http_bind, http_port)", exc)
        return 1
    except Exception:  # a fault of the node's after the receivers started: stop, say so
        logger.exception("the node failed while starting or running; stopping")
        return 1
    finally:
        stop.set()
        if http is not None:
            http.stop()
        pool.stop()
        polls.shutdown()
        for thread in workers:
            thread.join(timeout=60)
        services.engine.dispose()
        logger.info("stopped")


def work(settings: Settings, count: int) -> int:
    """`ichtriage worker`: triage workers without the DICOM receiver, e.g. on a GPU host
    sharing the node's PostgreSQL database and file store. The node's `serve` keeps the
    scheduler and the outbox, so results are sent once."""
    configure_logging(settings.log_level)
    try:
        check_all(settings)
    except StartupError as exc:
        logger.error("cannot start: %s", exc)
        return 1
    services = open_services(settings)
    try:
        holder = load_model(settings, services.engine)
    except StartupError as exc:
        logger.error("cannot start: %s", exc)
        services.engine.dispose()
        return 1
    recover(services, files_too=False)
    stop = _stop_on_signals()
    workers = _start_triage(settings, services, count, holder, stop)
    logger.info("ready: %d triage workers, %s", len(workers), _model_words(holder))
    try:
        stop.wait()
    finally:
        for thread in workers:
            thread.join(timeout=60)
        services.engine.dispose()
        logger.info("stopped")
    return 0

"""What the node checks before it says `ready:`: each mistake an operator can make in the
settings ends the start with one line that names the setting, never a traceback per study
later."""

from __future__ import annotations

import logging
import shutil
import tempfile
from typing import TYPE_CHECKING

from sqlalchemy import Engine
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from node.config import Settings
from storage.db import upgrade

if TYPE_CHECKING:
    from node.triage.registry import ModelHolder
    from storage.registry import ModelEntry

logger = logging.getLogger(__name__)


class StartupError(Exception):
    """A setting the node cannot start with; the message names the setting and the fix."""


def check_data_dir(settings: Settings) -> None:
    """The file store exists (it is made) and takes a file. Less free space than
    `min_free_mb` is a warning, not a stop: every instance is refused (0xA700) until there is
    room, and the rest of the node (queries, the worklist) still serves."""
    folder = settings.files_dir
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-check-"):
            pass
        free_mb = shutil.disk_usage(folder).free // (1024 * 1024)
    except OSError as exc:
        raise StartupError(f"data_dir {settings.data_dir}: cannot write in {folder}: "
                           f"{exc.strerror or exc}") from exc
    if free_mb < settings.min_free_mb:
        logger.warning("data_dir %s: %d MB free, less than min_free_mb (%d): every instance "
                       "will be refused (0xA700) until there is room", settings.data_dir,
                       free_mb, settings.min_free_mb)


def prepare_database(settings: Settings) -> None:
    """The database exists at the newest schema (created or migrated)."""
    url = settings.database_url
    shown = make_url(url).render_as_string(hide_password=True)
    try:
        upgrade(url)
    except (SQLAlchemyError, OSError) as exc:
        reason = getattr(exc, "orig", None) or exc
        raise StartupError(f"db_url {shown}: cannot open the database: "
                           f"{str(reason).strip().splitlines()[0]}") from exc


def check_device(device: str) -> None:
    """`device` is a torch device this machine has ("auto" and "cpu" always are: torch is
    imported only to check another)."""
    if device in ("auto", "cpu"):
        return
    import torch

    try:
        parsed = torch.device(device)
    except RuntimeError as exc:
        raise StartupError(f"device {device!r} is not a torch device (auto, cpu, cuda, "
                           "cuda:N)") from exc
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            raise StartupError(f"device {device}: torch finds no CUDA device on this machine "
                               "(use --device cpu or auto)")
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            raise StartupError(f"device {device}: this machine has "
                               f"{torch.cuda.device_count()} CUDA devices")


def register_model(settings: Settings, engine: Engine) -> ModelEntry:
    """The registry's active model: the `model` setting imported when new, or the shipped demo
    model registered on first start (`node.triage.registry.ensure_active_model`), whether or
    not this process runs triage workers."""
    from ml.errors import MLError
    from node.triage.registry import ModelUnavailableError, ensure_active_model
    from storage.errors import StorageError
    from storage.registry import ModelRegistry

    registry = ModelRegistry(engine, settings.models_dir)
    shown = settings.model or "(the registry's active model)"
    try:
        return ensure_active_model(registry, settings.model)
    except (ModelUnavailableError, MLError, StorageError, OSError) as exc:
        hint = "" if settings.model else " (`ichtriage admin models list`)"
        raise StartupError(f"model {shown}: {exc}{hint}") from exc


def load_model(settings: Settings, engine: Engine) -> ModelHolder:
    """The registry's active model (`register_model`), loaded now on its device, so that a
    missing or broken checkpoint stops the start instead of failing every study."""
    from ml.errors import MLError
    from node.triage.registry import ModelHolder, ModelUnavailableError
    from storage.registry import ModelRegistry

    check_device(settings.device)
    entry = register_model(settings, engine)
    holder = ModelHolder(ModelRegistry(engine, settings.models_dir), device=settings.device)
    try:
        holder.get()
    except (ModelUnavailableError, MLError, OSError, RuntimeError, ValueError, KeyError) as exc:
        raise StartupError(f"model {entry.name} ({entry.file_path}): cannot be loaded: "
                           f"{exc}") from exc
    return holder


def check_retraining(settings: Settings) -> None:
    """A retrain_cron that APScheduler reads (field ranges, names), when one is set."""
    if not settings.retrain_cron:
        return
    from apscheduler.triggers.cron import CronTrigger

    try:
        CronTrigger.from_crontab(settings.retrain_cron, timezone="UTC")
    except ValueError as exc:
        raise StartupError(f"retrain_cron {settings.retrain_cron!r}: {exc}") from exc


def check_all(settings: Settings) -> None:
    """The start-up checks before the database is opened, in the order an operator would fix
    them; `load_model` follows when the command runs triage workers."""
    check_data_dir(settings)
    check_retraining(settings)
    prepare_database(settings)

"""The model registry as the node uses it: checkpoints are judged by `ml` (the validating
reader) and kept by `storage.registry`; the node starts with the registry's active model, and
its workers pick up a change of it before their next job, without a restart.

How the `model` setting (`--model PATH`) relates to the registry: it seeds it. At start a
file not registered yet is imported and made the active model (promoted by "node start");
a file registered already changes nothing, and the registry decides (a warning says so when
it is not the active one): an admin's promotion is never undone by a restart. Without the
setting, an empty registry gets the shipped demo model, registered as "demo" and active.
"""

from __future__ import annotations

import logging
import re
import threading
from dataclasses import dataclass
from pathlib import Path

from ml.checkpoint import verify_checkpoint
from ml.inference import Classifier
from ml.shipped import shipped_checkpoint
from storage.registry import (
    DuplicateModelError,
    ModelEntry,
    ModelRegistry,
    NewModel,
    RegistryError,
    file_sha256,
)

logger = logging.getLogger(__name__)

DEMO_NAME = "demo"
START_ACTOR = "node start"


class ModelUnavailableError(Exception):
    """No model can be run: none active, or its file is missing or not the registered one."""


def default_name(path: Path, weights_sha256: str) -> str:
    """`<file stem>-<8 hex of the weights>`: `best.pt` of two runs get two names."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "-", path.stem).strip("-._")[:48] or "model"
    return f"{stem}-{weights_sha256[:8]}"


def import_checkpoint(registry: ModelRegistry, path: Path, *, actor: str, name: str | None = None,
                      version: str | None = None, reason: str = "",
                      activate: bool = False) -> ModelEntry:
    """Verify `path` (ml.checkpoint.verify_checkpoint: ModelError when it is not what it
    claims) and register it; the version defaults to the weights' sha256[:12]."""
    verified = verify_checkpoint(path)
    card = verified.card
    new = NewModel(
        name=name or default_name(path, card.sha256), architecture=card.architecture,
        version=version or card.sha256[:12], card=card.to_dict(),
        file_sha256=verified.file_sha256, weights_sha256=card.sha256,
        training_data=card.training_data, metrics=card.metrics)
    return registry.add(new, path, actor=actor, reason=reason, activate=activate)


def ensure_active_model(registry: ModelRegistry, configured: str) -> ModelEntry:
    """The model the node starts with (see the module's docstring for the rules)."""
    if configured:
        path = Path(configured)
        if not path.is_file():
            raise ModelUnavailableError(f"{path}: no such file")
        known = registry.by_file(file_sha256(path))
        if known is None:
            try:
                return import_checkpoint(registry, path, actor=START_ACTOR, activate=True,
                                         reason=f"--model {path} at start")
            except DuplicateModelError:
                pass  # another process of the node imported it meanwhile
        else:
            active = registry.active()
            if active is not None and active.pk != known.pk:
                logger.warning("--model %s is registered as %s (%s); the registry's active "
                               "model %s is used: `ichtriage admin models promote %s` to use "
                               "it", path, known.name, known.state.value, active.name,
                               known.name)
    elif not registry.entries():
        try:
            return import_checkpoint(registry, shipped_checkpoint(), actor=START_ACTOR,
                                     name=DEMO_NAME, activate=True,
                                     reason="the shipped demo model, on first start")
        except DuplicateModelError:
            pass
    active = registry.active()
    if active is None:
        raise ModelUnavailableError("no model is active in the registry: `ichtriage admin "
                                    "models list`, then `... models promote NAME`")
    return active


@dataclass(frozen=True)
class ActiveModel:
    """A loaded classifier and the registry entry it was loaded from."""

    classifier: Classifier
    entry: ModelEntry


class ModelHolder:
    """The registry's active model, loaded once and loaded again before a job when the
    active row (its id or its file's sha256) changed: a promotion or a rollback is picked
    up without a restart, for the price of one indexed select per job."""

    def __init__(self, registry: ModelRegistry, *, device: str = "auto") -> None:
        self.registry = registry
        self.device = device
        self._loaded: ActiveModel | None = None
        self._lock = threading.Lock()

    def get(self) -> ActiveModel:
        try:
            ref = self.registry.active_ref()
        except RegistryError as exc:
            raise ModelUnavailableError(str(exc)) from exc
        if ref is None:
            raise ModelUnavailableError("no model is active in the registry (`ichtriage admin "
                                        "models promote NAME`)")
        with self._lock:
            loaded = self._loaded
            if loaded is None or (loaded.entry.pk, loaded.entry.file_sha256) != (
                    ref.pk, ref.file_sha256):
                self._loaded = loaded = self._load(self.registry.by_pk(ref.pk))
            return loaded

    def _load(self, entry: ModelEntry) -> ActiveModel:
        path = entry.file_path
        try:
            actual = file_sha256(path)
        except OSError as exc:
            raise ModelUnavailableError(f"model {entry.name}: its file {path} is unreadable: "
                                        f"{exc.strerror or exc}") from exc
        if actual != entry.file_sha256:
            raise ModelUnavailableError(f"model {entry.name}: its file {path} is not the one "
                                        f"registered (sha256 {actual[:12]}, registered "
                                        f"{entry.file_sha256[:12]})")
        classifier = Classifier.load(path, device=self.device)
        logger.info("model %s %s (%s) loaded on %s", entry.name, entry.version,
                    entry.architecture, classifier.device)
        return ActiveModel(classifier, entry)

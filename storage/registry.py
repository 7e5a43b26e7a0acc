"""The model registry: every model the node knows, which one is active, and every decision.

A model is a checkpoint file the registry keeps in its own folder (copied there on import,
named by the file's sha256, so nothing outside can change it under a name; the row holds the
absolute path, so an admin command and the node agree on it whatever their data directory), with its card,
metrics and state: candidate, active or retired. Exactly one model is active: a partial unique
index (`state = 'active'`, see `storage.models.Model`) makes the database refuse a second, so
two promotions at once cannot both win. Promote, rollback and retire are each one
transaction, and each leaves a `model_event` row saying who did what and why.

Rollback is a stack: each activation remembers the model active before it, and a rollback
returns to that one, which then remembers its own predecessor. A retired model is never
returned to, and a model cannot be retired while active.

The registry does not judge checkpoints (it imports nothing from `ml`): the caller has read
and verified the file, and gives its sha256; the copy is checked against it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, insert, select, update
from sqlalchemy.exc import IntegrityError

from storage.db import reader
from storage.errors import StorageError
from storage.models import Model, ModelEvent, ModelState, utcnow

logger = logging.getLogger(__name__)

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_CHUNK = 1 << 20


class RegistryError(StorageError):
    """A registry operation refused; nothing was changed."""


class UnknownModelError(RegistryError):
    """No model is registered under the name given."""

    def __init__(self, name: str) -> None:
        super().__init__(f"no model named {name!r} is registered (`ichtriage admin models list`)")
        self.name = name


class ModelStateError(RegistryError):
    """The model's state does not allow what was asked (retire the active one, promote a
    retired one, roll back with nothing to return to)."""


class DuplicateModelError(RegistryError):
    """The name, or the very same file, is registered already."""


@dataclass(frozen=True)
class NewModel:
    """What the caller read from a verified checkpoint, to register."""

    name: str
    architecture: str
    version: str
    card: Mapping[str, Any]
    file_sha256: str
    weights_sha256: str
    training_data: str = ""
    metrics: Mapping[str, Any] | None = None

    def __post_init__(self) -> None:
        if not NAME.fullmatch(self.name):
            raise ValueError(f"name: {self.name!r} is not 1-64 letters, digits, '.', '_' or "
                             "'-' (starting with a letter or digit)")
        for field in ("file_sha256", "weights_sha256"):
            if not re.fullmatch(r"[0-9a-f]{64}", getattr(self, field)):
                raise ValueError(f"{field}: not a sha256 in hex: {getattr(self, field)!r}")
        if not self.version.strip() or len(self.version) > 64:
            raise ValueError(f"version: must be 1-64 characters, got {self.version!r}")


@dataclass(frozen=True)
class ModelEntry:
    pk: int
    name: str
    architecture: str
    version: str
    card: dict[str, Any]
    file_path: Path  # absolute: the copy made on import, in the registry's folder
    file_sha256: str
    weights_sha256: str
    source_path: str
    training_data: str
    metrics: dict[str, Any]
    created_at: datetime
    state: ModelState
    promoted_at: datetime | None
    promoted_by: str
    reason: str

    def to_json(self) -> dict[str, Any]:
        """JSON-friendly, for `--json` listings (the card only by its sha256)."""
        return {"name": self.name, "architecture": self.architecture, "version": self.version,
                "state": self.state.value, "file": str(self.file_path),
                "file_sha256": self.file_sha256, "weights_sha256": self.weights_sha256,
                "source": self.source_path, "training_data": self.training_data,
                "metrics": self.metrics, "created_at": self.created_at.isoformat(),
                "promoted_at": self.promoted_at.isoformat() if self.promoted_at else None,
                "promoted_by": self.promoted_by, "reason": self.reason}


@dataclass(frozen=True)
class ActiveRef:
    """The cheap check a worker makes before each job: which model, which file."""

    pk: int
    file_sha256: str


@dataclass(frozen=True)
class Decision:
    """One row of a model's history."""

    at: datetime
    model: str
    action: str
    from_state: str
    to_state: str
    actor: str
    reason: str
    previous: str | None  # for an activation, the model active before

    def to_json(self) -> dict[str, Any]:
        return {"at": self.at.isoformat(), "model": self.model, "action": self.action,
                "from": self.from_state, "to": self.to_state, "actor": self.actor,
                "reason": self.reason, "previous": self.previous}


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


class ModelRegistry:
    def __init__(self, engine: Engine, root: Path) -> None:
        self.engine = engine
        self.root = Path(root)

    # -- reading -------------------------------------------------------------------------

    def active_ref(self) -> ActiveRef | None:
        """The active model's id and file hash: one indexed row, read before every job."""
        with reader(self.engine).connect() as conn:
            row = conn.execute(select(Model.id, Model.file_sha256)
                               .where(Model.state == ModelState.ACTIVE)).first()
        return ActiveRef(row[0], row[1]) if row is not None else None

    def active(self) -> ModelEntry | None:
        with reader(self.engine).connect() as conn:
            row = conn.execute(select(Model.__table__)
                               .where(Model.state == ModelState.ACTIVE)).first()
        return self._entry(row) if row is not None else None

    def get(self, name: str) -> ModelEntry:
        with reader(self.engine).connect() as conn:
            row = conn.execute(select(Model.__table__).where(Model.name == name)).first()
        if row is None:
            raise UnknownModelError(name)
        return self._entry(row)

    def by_pk(self, pk: int) -> ModelEntry:
        with reader(self.engine).connect() as conn:
            row = conn.execute(select(Model.__table__).where(Model.id == pk)).one()
        return self._entry(row)

    def by_file(self, sha256: str) -> ModelEntry | None:
        with reader(self.engine).connect() as conn:
            row = conn.execute(select(Model.__table__).where(Model.file_sha256 == sha256)).first()
        return self._entry(row) if row is not None else None

    def entries(self) -> list[ModelEntry]:
        with reader(self.engine).connect() as conn:
            rows = conn.execute(select(Model.__table__).order_by(Model.id)).all()
        return [self._entry(r) for r in rows]

    def history(self, name: str | None = None) -> list[Decision]:
        """Decisions, oldest first: every model's, or `name`'s (UnknownModelError)."""
        previous = Model.__table__.alias("previous")
        query = (select(ModelEvent.at, Model.name, ModelEvent.action, ModelEvent.from_state,
                        ModelEvent.to_state, ModelEvent.actor, ModelEvent.reason, previous.c.name)
                 .join(Model, Model.id == ModelEvent.model_pk)
                 .outerjoin(previous, previous.c.id == ModelEvent.previous_pk)
                 .order_by(ModelEvent.id))
        if name is not None:
            query = query.where(Model.id == self.get(name).pk)
        with reader(self.engine).connect() as conn:
            return [Decision(*row) for row in conn.execute(query).all()]

    def _entry(self, row: Any) -> ModelEntry:
        return ModelEntry(
            pk=row.id, name=row.name, architecture=row.architecture, version=row.version,
            card=json.loads(row.card), file_path=Path(row.file_path),
            file_sha256=row.file_sha256, weights_sha256=row.weights_sha256,
            source_path=row.source_path, training_data=row.training_data,
            metrics=json.loads(row.metrics), created_at=row.created_at,
            state=ModelState(row.state), promoted_at=row.promoted_at,
            promoted_by=row.promoted_by, reason=row.reason)

    # -- changing ------------------------------------------------------------------------

    def add(self, new: NewModel, source: Path, *, actor: str, reason: str = "",
            activate: bool = False) -> ModelEntry:
        """Register `source` (read and verified by the caller) as a candidate, or as the
        active model with `activate`. The file is copied into the registry's folder first;
        the rows are one transaction. DuplicateModelError when the name or file is known."""
        known = self.by_file(new.file_sha256)
        if known is not None:
            raise DuplicateModelError(f"{source} is registered already, as {known.name!r}")
        stored = self._copy_in(source, new.file_sha256)
        try:
            with self.engine.begin() as conn:
                if conn.execute(select(Model.id).where(Model.name == new.name)).first():
                    raise DuplicateModelError(f"a model named {new.name!r} is registered already")
                pk = conn.execute(insert(Model).values(
                    name=new.name, architecture=new.architecture, version=new.version,
                    card=json.dumps(dict(new.card), allow_nan=False), file_path=str(stored),
                    file_sha256=new.file_sha256, weights_sha256=new.weights_sha256,
                    source_path=str(source)[:500], training_data=new.training_data,
                    metrics=json.dumps(dict(new.metrics or {}), allow_nan=False),
                    created_at=utcnow(), state=ModelState.CANDIDATE, promoted_by="",
                    reason=reason).returning(Model.id)).scalar_one()
                _event(conn, pk, "import", "", ModelState.CANDIDATE, actor, reason)
                if activate:
                    self._activate(conn, pk, ModelState.CANDIDATE, "promote", actor, reason)
        except IntegrityError as exc:
            raise DuplicateModelError(f"{new.name!r} ({source}) was registered meanwhile, or "
                                      "another model made active: try again") from exc
        logger.info("model %s registered (%s, file sha256 %s)%s", new.name, new.architecture,
                    new.file_sha256[:12], ", active" if activate else "")
        return self.get(new.name)

    def promote(self, name: str, *, actor: str, reason: str = "") -> ModelEntry:
        """Make `name` the active model; the one active before becomes a candidate."""
        with self._changing(f"promote {name}") as conn:
            pk, state = self._state_of(conn, name)
            if state == ModelState.RETIRED:
                raise ModelStateError(f"{name} is retired: a retired model is not promoted "
                                      "(import its file under a new name to use it again)")
            if state == ModelState.ACTIVE:
                raise ModelStateError(f"{name} is the active model already")
            self._activate(conn, pk, state, "promote", actor, reason)
        logger.info("model %s promoted by %s: %s", name, actor, reason or "(no reason given)")
        return self.get(name)

    def rollback(self, *, actor: str, reason: str = "") -> ModelEntry:
        """Return to the model that was active before the active one."""
        with self._changing("rollback") as conn:
            current = conn.execute(select(Model.id, Model.name)
                                   .where(Model.state == ModelState.ACTIVE)).first()
            if current is None:
                raise ModelStateError("no model is active: nothing to roll back")
            target = _previous_of(conn, current.id)
            if target is None:
                raise ModelStateError(f"{current.name} has no earlier active model to roll "
                                      "back to")
            row = conn.execute(select(Model.name, Model.state).where(Model.id == target)).one()
            if row.state == ModelState.RETIRED:
                raise ModelStateError(f"the model before {current.name}, {row.name}, is retired:"
                                      " promote one by name instead")
            self._activate(conn, target, ModelState(row.state), "rollback", actor,
                           reason or f"rolled back from {current.name}",
                           rollback_to=_previous_of(conn, target))
        logger.info("model rolled back from %s to %s by %s", current.name, row.name, actor)
        return self.get(row.name)

    def retire(self, name: str, *, actor: str, reason: str = "") -> ModelEntry:
        """Take a candidate out of service for good; the active model cannot be retired."""
        with self._changing(f"retire {name}") as conn:
            pk, state = self._state_of(conn, name)
            if state == ModelState.ACTIVE:
                raise ModelStateError(f"{name} is the active model: promote another (or roll "
                                      "back) before retiring it")
            if state == ModelState.RETIRED:
                raise ModelStateError(f"{name} is retired already")
            conn.execute(update(Model).where(Model.id == pk).values(
                state=ModelState.RETIRED, reason=reason))
            _event(conn, pk, "retire", state, ModelState.RETIRED, actor, reason)
        logger.info("model %s retired by %s", name, actor)
        return self.get(name)

    def note(self, name: str, *, action: str, actor: str, reason: str) -> ModelEntry:
        """Record a decision that leaves the model's state as it is (a gate that kept a
        candidate, say): an event, and the reason shown with the model."""
        if not action or len(action) > 16:
            raise ValueError(f"action: 1-16 characters, got {action!r}")
        with self._changing(f"{action} {name}") as conn:
            pk, state = self._state_of(conn, name)
            conn.execute(update(Model).where(Model.id == pk).values(reason=reason))
            _event(conn, pk, action, state, state, actor, reason)
        return self.get(name)

    def _activate(self, conn: Connection, pk: int, state: ModelState, action: str, actor: str,
                  reason: str, *, rollback_to: int | None = None) -> None:
        """Inside `conn`'s transaction: the active model (if any) becomes a candidate, `pk`
        becomes active. The activation remembers the model it replaced, or for a rollback
        `rollback_to` (the returned-to model's own predecessor), so rollbacks form a stack."""
        now = utcnow()
        current = conn.execute(select(Model.id, Model.name)
                               .where(Model.state == ModelState.ACTIVE)).first()
        if current is not None:
            conn.execute(update(Model).where(Model.id == current.id).values(
                state=ModelState.CANDIDATE, reason=f"replaced ({action})"))
            _event(conn, current.id, "demote", ModelState.ACTIVE, ModelState.CANDIDATE, actor,
                   f"replaced ({action})")
        conn.execute(update(Model).where(Model.id == pk).values(
            state=ModelState.ACTIVE, promoted_at=now, promoted_by=actor[:64], reason=reason))
        remembered = rollback_to if action == "rollback" else (
            current.id if current is not None else None)
        _event(conn, pk, action, state, ModelState.ACTIVE, actor, reason, previous=remembered)

    @contextmanager
    def _changing(self, what: str) -> Iterator[Connection]:
        """One write transaction; a second active model (the partial unique index refuses
        it: a promotion raced this one) becomes a RegistryError, with nothing changed."""
        try:
            with self.engine.begin() as conn:
                yield conn
        except IntegrityError as exc:
            raise RegistryError(f"{what}: another change of the active model happened at the "
                                "same time; nothing changed, try again") from exc

    @staticmethod
    def _state_of(conn: Connection, name: str) -> tuple[int, ModelState]:
        row = conn.execute(select(Model.id, Model.state).where(Model.name == name)).first()
        if row is None:
            raise UnknownModelError(name)
        return row.id, ModelState(row.state)

    def _copy_in(self, source: Path, sha256: str) -> Path:
        """`source` copied to `<root>/<sha256>.pt` (atomically); RegistryError when the copy's
        bytes are not those the caller verified."""
        self.root.mkdir(parents=True, exist_ok=True)
        target = (self.root / f"{sha256}.pt").resolve()
        if target.is_file() and file_sha256(target) == sha256:
            return target  # a copy left by an import that did not commit: the same bytes
        # A temporary name of this call's own: the processes of a node starting together
        # each copy the shipped model in, and a shared name let one truncate or move
        # another's copy.
        fd, name = tempfile.mkstemp(prefix=f".{sha256}.", suffix=".tmp", dir=self.root)
        tmp = Path(name)
        try:
            digest = hashlib.sha256()
            with source.open("rb") as src, os.fdopen(fd, "wb") as dst:
                while chunk := src.read(_CHUNK):
                    digest.update(chunk)
                    dst.write(chunk)
                dst.flush()
                os.fsync(dst.fileno())
            if digest.hexdigest() != sha256:
                raise RegistryError(f"{source} changed while it was imported (sha256 differs "
                                    "from the file verified): try again")
            os.replace(tmp, target)  # the same bytes whoever renames last
        finally:
            tmp.unlink(missing_ok=True)
        return target


def _event(conn: Connection, pk: int, action: str, from_state: str, to_state: str, actor: str,
           reason: str, *, previous: int | None = None) -> None:
    conn.execute(insert(ModelEvent).values(
        model_pk=pk, action=action, from_state=str(from_state), to_state=str(to_state),
        previous_pk=previous, actor=actor[:64], reason=reason, at=utcnow()))


def _previous_of(conn: Connection, pk: int) -> int | None:
    """What the latest activation of `pk` remembers as the model active before it."""
    return conn.execute(select(ModelEvent.previous_pk).where(
        ModelEvent.model_pk == pk, ModelEvent.to_state == ModelState.ACTIVE.value)
        .order_by(ModelEvent.id.desc()).limit(1)).scalar()

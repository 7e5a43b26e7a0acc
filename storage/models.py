"""The node's database schema (SQLAlchemy 2, typed): patients, studies, series, instances,
associations (an audit of who sent what) and the job queue.

Changes to this module need an Alembic migration in `storage/migrations/versions/`.
"""

from __future__ import annotations

import enum
from datetime import UTC, datetime

from sqlalchemy import (
    BigInteger,
    DateTime,
    Enum,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    text,
    true,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Timestamps stored as UTC and always returned timezone-aware (SQLite keeps no zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given for a UTC column")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class SeriesStatus(enum.StrEnum):
    RECEIVING = "receiving"  # instances arriving, or arrived since the last check
    QUEUED = "queued"
    PROCESSING = "processing"
    DONE = "done"
    FAILED = "failed"
    NOT_ELIGIBLE = "not_eligible"  # stored and indexed; not a series the triage model reads


class JobStatus(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


def _enum(cls: type[enum.StrEnum], name: str) -> Enum:
    # Stored as plain strings with a CHECK constraint: portable and readable in SQL.
    return Enum(cls, name=name, native_enum=False, length=16,
                values_callable=lambda e: [m.value for m in e])


class Patient(Base):
    __tablename__ = "patient"
    __table_args__ = (UniqueConstraint("patient_key"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    # PatientID + IssuerOfPatientID: the identity a PACS keys patients by.
    patient_key: Mapped[str] = mapped_column(String(130))
    patient_id: Mapped[str] = mapped_column(String(64), default="", index=True)
    issuer_of_patient_id: Mapped[str] = mapped_column(String(64), default="")
    patient_name: Mapped[str] = mapped_column(String(324), default="")
    # PatientName folded for case-insensitive C-FIND matching (storage.person_names)
    patient_name_match: Mapped[str] = mapped_column(String(324), default="", server_default="",
                                                    index=True)
    birth_date: Mapped[str] = mapped_column(String(8), default="")
    sex: Mapped[str] = mapped_column(String(16), default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    studies: Mapped[list[Study]] = relationship(back_populates="patient")


class Study(Base):
    __tablename__ = "study"

    id: Mapped[int] = mapped_column(primary_key=True)
    study_uid: Mapped[str] = mapped_column(String(64), unique=True)
    patient_pk: Mapped[int] = mapped_column(ForeignKey("patient.id"), index=True)
    accession_number: Mapped[str] = mapped_column(String(16), default="", index=True)
    study_id: Mapped[str] = mapped_column(String(16), default="")
    study_date: Mapped[str] = mapped_column(String(8), default="", index=True)
    study_time: Mapped[str] = mapped_column(String(16), default="")
    study_description: Mapped[str] = mapped_column(String(64), default="")
    referring_physician: Mapped[str] = mapped_column(String(324), default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    patient: Mapped[Patient] = relationship(back_populates="studies")
    series: Mapped[list[Series]] = relationship(back_populates="study")


class Series(Base):
    __tablename__ = "series"
    __table_args__ = (Index("ix_series_status_last", "status", "last_received_at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    series_uid: Mapped[str] = mapped_column(String(64), unique=True)
    study_pk: Mapped[int] = mapped_column(ForeignKey("study.id"), index=True)
    modality: Mapped[str] = mapped_column(String(16), default="")
    body_part: Mapped[str] = mapped_column(String(16), default="")
    series_number: Mapped[int | None] = mapped_column(Integer)
    series_description: Mapped[str] = mapped_column(String(64), default="")
    status: Mapped[SeriesStatus] = mapped_column(_enum(SeriesStatus, "series_status"),
                                                 default=SeriesStatus.RECEIVING)
    status_reason: Mapped[str] = mapped_column(Text, default="")
    instance_count: Mapped[int] = mapped_column(Integer, default=0)
    first_received_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_received_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # Bumped on every new instance: a job remembers the revision it read, so instances that
    # arrive while it runs make the series due again.
    revision: Mapped[int] = mapped_column(Integer, default=0)

    study: Mapped[Study] = relationship(back_populates="series")
    instances: Mapped[list[Instance]] = relationship(back_populates="series")


class Instance(Base):
    __tablename__ = "instance"

    id: Mapped[int] = mapped_column(primary_key=True)
    sop_uid: Mapped[str] = mapped_column(String(64), unique=True)
    series_pk: Mapped[int] = mapped_column(ForeignKey("series.id"), index=True)
    sop_class_uid: Mapped[str] = mapped_column(String(64))
    transfer_syntax_uid: Mapped[str] = mapped_column(String(64))
    instance_number: Mapped[int | None] = mapped_column(Integer)
    image_type: Mapped[str] = mapped_column(String(128), default="")
    image_position: Mapped[str] = mapped_column(String(96), default="")
    image_orientation: Mapped[str] = mapped_column(String(192), default="")
    rows: Mapped[int | None] = mapped_column(Integer)
    columns: Mapped[int | None] = mapped_column(Integer)
    number_of_frames: Mapped[int | None] = mapped_column(Integer)
    file_path: Mapped[str] = mapped_column(String(200))
    file_size: Mapped[int] = mapped_column(Integer)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    calling_ae: Mapped[str] = mapped_column(String(16), default="")
    association_pk: Mapped[int | None] = mapped_column(ForeignKey("association.id"), index=True)
    # Same SOP Instance UID received again: the first copy is kept, the repeats counted.
    duplicates: Mapped[int] = mapped_column(Integer, default=0)

    series: Mapped[Series] = relationship(back_populates="instances")


class Association(Base):
    """One accepted DICOM association: an audit of who sent what, and when."""

    __tablename__ = "association"

    id: Mapped[int] = mapped_column(primary_key=True)
    calling_ae: Mapped[str] = mapped_column(String(16))
    called_ae: Mapped[str] = mapped_column(String(16))
    peer_host: Mapped[str] = mapped_column(String(64), default="")
    peer_port: Mapped[int | None] = mapped_column(Integer)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # open / released / aborted
    state: Mapped[str] = mapped_column(String(16), default="open")
    stored: Mapped[int] = mapped_column(Integer, default=0)
    failed: Mapped[int] = mapped_column(Integer, default=0)
    duplicates: Mapped[int] = mapped_column(Integer, default=0)


class Job(Base):
    """A unit of work in the queue (PS: procrastinate's design: status, attempts, lease, lock)."""

    __tablename__ = "job"
    __table_args__ = (
        # One queued job per lock: a series is queued once however often it is found due.
        Index(
            "uq_job_queueing_lock_queued",
            "queueing_lock",
            unique=True,
            sqlite_where=text("status = 'queued'"),
            postgresql_where=text("status = 'queued'"),
        ),
        Index("ix_job_status_run_after", "status", "run_after"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(String(32))
    queueing_lock: Mapped[str] = mapped_column(String(100))
    series_pk: Mapped[int | None] = mapped_column(ForeignKey("series.id"), index=True)
    series_revision: Mapped[int] = mapped_column(Integer, default=0)
    status: Mapped[JobStatus] = mapped_column(_enum(JobStatus, "job_status"),
                                              default=JobStatus.QUEUED)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    run_after: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    worker: Mapped[str] = mapped_column(String(128), default="")
    last_error: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class ModelState(enum.StrEnum):
    """Where a registered model stands: exactly one is ACTIVE (a partial unique index)."""

    CANDIDATE = "candidate"  # registered, not in use; may be promoted
    ACTIVE = "active"  # the one the workers run
    RETIRED = "retired"  # taken out of service; never promoted or rolled back to


class Model(Base):
    """A model the node knows: its checkpoint file, card and state (storage.registry)."""

    __tablename__ = "model"
    __table_args__ = (
        # The one active model: a lock in the database, not a convention (procrastinate's
        # partial unique indexes). Two promotions at once: the second fails, nothing changes.
        Index("uq_model_state_active", "state", unique=True,
              sqlite_where=text("state = 'active'"), postgresql_where=text("state = 'active'")),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    architecture: Mapped[str] = mapped_column(String(32))
    version: Mapped[str] = mapped_column(String(64))
    card: Mapped[str] = mapped_column(Text)  # JSON, as the checkpoint carries it
    file_path: Mapped[str] = mapped_column(String(500))  # absolute: the registry's own copy
    file_sha256: Mapped[str] = mapped_column(String(64), unique=True)  # of the file's bytes
    weights_sha256: Mapped[str] = mapped_column(String(64))  # the card's, of the state_dict
    source_path: Mapped[str] = mapped_column(String(500), default="")  # where it was imported from
    training_data: Mapped[str] = mapped_column(Text, default="")
    metrics: Mapped[str] = mapped_column(Text, default="{}")  # JSON, from the card
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    state: Mapped[ModelState] = mapped_column(_enum(ModelState, "model_state"),
                                              default=ModelState.CANDIDATE)
    promoted_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    promoted_by: Mapped[str] = mapped_column(String(64), default="")
    reason: Mapped[str] = mapped_column(Text, default="")  # of the last decision on it


class ModelEvent(Base):
    """Every decision on a registered model, in order: import, promote, rollback, retire."""

    __tablename__ = "model_event"

    id: Mapped[int] = mapped_column(primary_key=True)
    model_pk: Mapped[int] = mapped_column(ForeignKey("model.id"), index=True)
    action: Mapped[str] = mapped_column(String(16))
    from_state: Mapped[str] = mapped_column(String(16), default="")
    to_state: Mapped[str] = mapped_column(String(16))
    # For an activation: the model active just before (what a rollback returns to).
    previous_pk: Mapped[int | None] = mapped_column(ForeignKey("model.id"))
    actor: Mapped[str] = mapped_column(String(64), default="")
    reason: Mapped[str] = mapped_column(Text, default="")
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Retraining(Base):
    """One retraining run: a lock that survives restarts (at most one row is running, a
    partial unique index), and a record of what it made and decided."""

    __tablename__ = "retraining"
    __table_args__ = (
        Index("uq_retraining_running", "status", unique=True,
              sqlite_where=text("status = 'running'"), postgresql_where=text("status = 'running'")),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    status: Mapped[JobStatus] = mapped_column(_enum(JobStatus, "retraining_status"),
                                              default=JobStatus.RUNNING)
    owner: Mapped[str] = mapped_column(String(128))  # host:pid of the process that runs it
    started_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    candidate: Mapped[str] = mapped_column(String(64), default="")  # registry name, once made
    outcome: Mapped[str] = mapped_column(Text, default="")  # the gate's reason, or the error


class TriageResult(Base):
    """The model's reading of one series: the series-level probabilities and calls."""

    __tablename__ = "triage_result"

    id: Mapped[int] = mapped_column(primary_key=True)
    series_pk: Mapped[int] = mapped_column(ForeignKey("series.id"), index=True)
    job_pk: Mapped[int | None] = mapped_column(ForeignKey("job.id"))
    series_revision: Mapped[int] = mapped_column(Integer, default=0)
    model_name: Mapped[str] = mapped_column(String(64))
    model_version: Mapped[str] = mapped_column(String(64))
    # The registry entry that produced it (None for results older than the registry).
    model_pk: Mapped[int | None] = mapped_column(ForeignKey("model.id"), index=True)
    # JSON objects keyed by label: {"any": 0.97, ...} and {"any": true, ...}
    probabilities: Mapped[str] = mapped_column(Text)
    calls: Mapped[str] = mapped_column(Text)
    positive: Mapped[bool] = mapped_column(default=False)
    max_probability: Mapped[float] = mapped_column(default=0.0)
    slices: Mapped[int] = mapped_column(Integer, default=0)
    sr_sop_uid: Mapped[str] = mapped_column(String(64), default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # Seconds from the last received slice to the result, as measured by the worker.
    latency_seconds: Mapped[float | None] = mapped_column()
    # False when the volume had a gap, too little coverage or unread slices: provisional.
    complete: Mapped[bool] = mapped_column(default=True, server_default=true())
    notes: Mapped[str] = mapped_column(Text, default="", server_default="")  # left out, why
    # Seconds the model itself took (tensors in, probabilities out; reading the slices not
    # counted). None for results older than migration 0008.
    inference_seconds: Mapped[float | None] = mapped_column()


class SlicePrediction(Base):
    """Per-slice probabilities behind a result, in slice order."""

    __tablename__ = "slice_prediction"
    __table_args__ = (UniqueConstraint("result_pk", "position"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    result_pk: Mapped[int] = mapped_column(ForeignKey("triage_result.id", ondelete="CASCADE"),
                                           index=True)
    instance_pk: Mapped[int] = mapped_column(ForeignKey("instance.id"))
    frame: Mapped[int] = mapped_column(Integer, default=0)
    position: Mapped[int] = mapped_column(Integer)
    probabilities: Mapped[str] = mapped_column(String(200))  # JSON list in LABELS order


class DeliveryStatus(enum.StrEnum):
    PENDING = "pending"
    SENT = "sent"
    FAILED = "failed"


class Delivery(Base):
    """An instance to send to a remote node by C-STORE: the persistent outbox."""

    __tablename__ = "delivery"
    __table_args__ = (
        UniqueConstraint("sop_uid", "destination"),
        Index("ix_delivery_status_next", "status", "next_attempt_at"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    sop_uid: Mapped[str] = mapped_column(String(64))
    file_path: Mapped[str] = mapped_column(String(200))
    destination: Mapped[str] = mapped_column(String(300))  # AE@HOST:PORT
    status: Mapped[DeliveryStatus] = mapped_column(_enum(DeliveryStatus, "delivery_status"),
                                                   default=DeliveryStatus.PENDING)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_error: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class ApiToken(Base):
    """A bearer token of the HTTP API: only its salted scrypt hash is kept (the secret is
    shown once, when it is made). Roles: reader, radiologist (gives feedback), admin."""

    __tablename__ = "api_token"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64))
    role: Mapped[str] = mapped_column(String(16))
    salt: Mapped[str] = mapped_column(String(64))  # hex
    secret_hash: Mapped[str] = mapped_column(String(128))  # hex of hashlib.scrypt
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class Feedback(Base):
    """A reader's word on one label of a study: the finding is present or absent, which
    confirms or corrects the model's call on the result it was given for."""

    __tablename__ = "feedback"
    __table_args__ = (Index("ix_feedback_study_label", "study_pk", "label"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    study_pk: Mapped[int] = mapped_column(ForeignKey("study.id"))
    result_pk: Mapped[int | None] = mapped_column(ForeignKey("triage_result.id"))
    label: Mapped[str] = mapped_column(String(32))
    present: Mapped[bool] = mapped_column()
    model_call: Mapped[bool | None] = mapped_column()  # None: no result to judge
    verdict: Mapped[str] = mapped_column(String(16))  # confirm / correct / label
    token_pk: Mapped[int | None] = mapped_column(ForeignKey("api_token.id"))
    author: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class AuditEvent(Base):
    """Who did what to which study, and when (in the spirit of IHE ATNA); never a patient's
    name or ID."""

    __tablename__ = "audit_event"
    __table_args__ = (Index("ix_audit_event_at", "at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    actor: Mapped[str] = mapped_column(String(64))  # token name, or "cli"
    token_pk: Mapped[int | None] = mapped_column(Integer)  # no FK: the record outlives tokens
    action: Mapped[str] = mapped_column(String(32))
    study_uid: Mapped[str] = mapped_column(String(64), default="")
    detail: Mapped[str] = mapped_column(String(200), default="")
    client: Mapped[str] = mapped_column(String(64), default="")  # the peer's address


class WebSession(Base):
    """A log-in session of the page: only the sha256 of its id (the cookie) is kept, with the
    token it was opened with; revoking the token deletes its sessions."""

    __tablename__ = "web_session"

    id: Mapped[int] = mapped_column(primary_key=True)
    sid_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    token_pk: Mapped[int] = mapped_column(ForeignKey("api_token.id", ondelete="CASCADE"),
                                          index=True)
    role: Mapped[str] = mapped_column(String(16))  # the token's role at log-in
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)


class WorkerBeat(Base):
    """A triage worker's heartbeat: each worker thread (of `serve` or of a stand-alone
    `ichtriage worker`, on any host) updates its row while it runs and deletes it when it
    stops; /healthz calls the node's workers alive when a row is fresh."""

    __tablename__ = "worker_beat"

    id: Mapped[int] = mapped_column(primary_key=True)
    worker: Mapped[str] = mapped_column(String(128), unique=True)  # host:pid:thread
    started_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    seen_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)


class NodeCounter(Base):
    """A monotonic count kept for /metrics by processes other than the HTTP server's (the
    receivers): e.g. ("associations_rejected", "calling_ae_not_recognized")."""

    __tablename__ = "node_counter"
    __table_args__ = (UniqueConstraint("name", "label", name="uq_node_counter_name_label"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64))
    label: Mapped[str] = mapped_column(String(64), default="")
    value: Mapped[int] = mapped_column(BigInteger, default=0)

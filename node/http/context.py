"""What the HTTP side works with, made once by `node.serve` and handed to `create_app`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry
from sqlalchemy import Engine

from node.http.saliency import HeatMaps
from node.http.sessions import BearerCache, SessionStore
from storage.audit import AuditLog
from storage.feedback import FeedbackStore
from storage.files import FileStore
from storage.queue_view import QueueView
from storage.studies import StudyReader
from storage.tokens import TokenStore

if TYPE_CHECKING:
    from node.scheduler import SeriesMonitor

# A request body larger than this is refused (413) before it is read: feedback and log-in
# forms are a few hundred bytes.
MAX_BODY_BYTES = 64 * 1024


@dataclass
class WebContext:
    engine: Engine
    files: FileStore
    metrics: bool = True  # serve /metrics
    heat_maps: HeatMaps | None = None  # None: no heat maps (no model here)
    monitor: SeriesMonitor | None = None  # for "complete this series now"; None: not offered
    tokens: TokenStore = field(init=False)
    audit: AuditLog = field(init=False)
    feedback: FeedbackStore = field(init=False)
    studies: StudyReader = field(init=False)
    queue: QueueView = field(init=False)
    sessions: SessionStore = field(init=False)
    bearers: BearerCache = field(default_factory=BearerCache)
    registry: CollectorRegistry | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        self.tokens = TokenStore(self.engine)
        self.audit = AuditLog(self.engine)
        self.feedback = FeedbackStore(self.engine)
        self.studies = StudyReader(self.engine)
        self.queue = QueueView(self.engine)
        self.sessions = SessionStore(self.engine)
        if self.metrics:
            from node.http.metrics import registry_for

            self.registry = registry_for(self.engine)

"""The one retry policy of the node: how often failing work is tried, and how long to wait.

Jobs (triage) and deliveries (the outbox) both follow it, with their own numbers.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff: `backoff_seconds` after the first failed try, multiplied by
    `backoff_factor` after each further one, at most `max_backoff_seconds`; no further try
    after `max_attempts` tries."""

    max_attempts: int = 3
    backoff_seconds: float = 5.0
    backoff_factor: float = 2.0
    max_backoff_seconds: float = 300.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1, got {self.max_attempts}")
        if self.backoff_seconds < 0 or self.backoff_factor < 1:
            raise ValueError("backoff_seconds must be >= 0 and backoff_factor >= 1")

    def delay(self, attempts: int) -> timedelta:
        """Wait before the next try, after `attempts` tries so far."""
        seconds = self.backoff_seconds * self.backoff_factor ** max(attempts - 1, 0)
        return timedelta(seconds=min(seconds, self.max_backoff_seconds))

"""Series-level queries of the index: which series have settled, what they contain, and their
transitions out of `receiving`."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Connection, Engine, and_, func, or_, select, update

from storage.db import reader
from storage.models import Association, Instance, Series, SeriesStatus

ABORTED = "aborted"  # association.state of a transfer that did not end with a release


@dataclass(frozen=True)
class SettledSeries:
    pk: int
    series_uid: str
    revision: int


@dataclass(frozen=True)
class SeriesContents:
    """What a series holds, summarised for eligibility rules."""

    modality: str
    body_part: str
    sop_classes: frozenset[str]
    image_types: frozenset[str]
    slices: int  # instances, counting every frame of a multi-frame instance


class SeriesIndex:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def settled(self, cutoff: datetime, *, aborted_cutoff: datetime | None = None,
                limit: int = 100) -> list[SettledSeries]:
        """Series with new instances and none since `cutoff`, oldest first. With
        `aborted_cutoff`, a series whose last transfer (the newest association that carried
        any of its instances, repeats included) was aborted (or cut by a node restart) has
        settled only if nothing came since `aborted_cutoff`: the sender is expected to send
        it again, whole."""
        settled = and_(Series.status == SeriesStatus.RECEIVING,
                       Series.last_received_at <= cutoff)
        if aborted_cutoff is not None:
            newest_association = (
                select(func.max(Instance.association_pk))
                .where(Instance.series_pk == Series.id)
                .correlate(Series).scalar_subquery())
            last_transfer = (
                select(Association.state).where(Association.id == newest_association)
                .correlate(Series).scalar_subquery())
            settled = and_(settled, or_(Series.last_received_at <= aborted_cutoff,
                                        func.coalesce(last_transfer, "") != ABORTED))
        with reader(self.engine).connect() as conn:
            rows = conn.execute(
                select(Series.id, Series.series_uid, Series.revision).where(settled)
                .order_by(Series.last_received_at).limit(limit)
            ).all()
        return [SettledSeries(r[0], r[1], r[2]) for r in rows]

    def receiving(self, series_uid: str) -> SettledSeries | None:
        """The series, when it is still receiving (for a completion asked by an operator)."""
        with reader(self.engine).connect() as conn:
            row = conn.execute(select(Series.id, Series.series_uid, Series.revision).where(
                Series.series_uid == series_uid,
                Series.status == SeriesStatus.RECEIVING)).first()
        return SettledSeries(row[0], row[1], row[2]) if row is not None else None

    def contents(self, series_pk: int) -> SeriesContents:
        with reader(self.engine).connect() as conn:
            series = conn.execute(select(Series.modality, Series.body_part)
                                  .where(Series.id == series_pk)).one()
            classes = conn.execute(select(Instance.sop_class_uid).distinct()
                                   .where(Instance.series_pk == series_pk)).scalars().all()
            types = conn.execute(select(Instance.image_type).distinct()
                                 .where(Instance.series_pk == series_pk)).scalars().all()
            slices = conn.execute(
                select(func.coalesce(func.sum(func.coalesce(Instance.number_of_frames, 1)), 0))
                .where(Instance.series_pk == series_pk)).scalar_one()
        return SeriesContents(series[0], series[1], frozenset(classes), frozenset(types),
                              int(slices))

    @staticmethod
    def mark(conn: Connection, series: SettledSeries, status: SeriesStatus,
             reason: str = "") -> bool:
        """Move a settled series on, unless an instance arrived since it was read."""
        result = conn.execute(update(Series).where(
            Series.id == series.pk, Series.revision == series.revision,
            Series.status == SeriesStatus.RECEIVING,
        ).values(status=status, status_reason=reason))
        return result.rowcount == 1

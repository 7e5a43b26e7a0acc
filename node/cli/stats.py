"""`ichtriage admin stats`: volumes per UTC day, the queue, turnaround p50/p95 (last slice to
result), positive rate per label and agreement with radiologists' feedback per label
(storage.stats). Tables for people, `--json` for scripts; exit 1 when there is no database."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import Any

from ml.labels import LABELS
from node.cli.table import format_table
from node.config import Settings
from storage.db import open_existing
from storage.errors import DatabaseMissingError
from storage.stats import NodeStats, collect


def add_stats_parser(commands: Any,
                     setting_flags: Callable[[argparse.ArgumentParser], None]) -> None:
    stats = commands.add_parser("stats", help="volumes, queue, turnaround, positive rate and "
                                "agreement with feedback, per label")
    stats.add_argument("--days", type=int, default=7,
                       help="UTC days counted, today included (default: %(default)s)")
    stats.add_argument("--json", action="store_true", help="one JSON object")
    setting_flags(stats)


def run_stats(args: argparse.Namespace, settings: Settings) -> int:
    if args.days < 1:
        print(f"ichtriage admin stats: --days must be >= 1, got {args.days}", file=sys.stderr)
        return 2
    try:
        engine = open_existing(settings.database_url)
    except DatabaseMissingError as exc:
        print(f"ichtriage admin stats: {exc}", file=sys.stderr)
        return 1
    try:
        stats = collect(engine, LABELS, days=args.days)
    finally:
        engine.dispose()
    print(json.dumps(stats.to_dict(), allow_nan=False) if args.json else render(stats))
    return 0


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} s"


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def render(stats: NodeStats) -> str:
    """Four tables: per day, queue and turnaround, per label."""
    days = format_table(["day (UTC)", "studies", "series", "instances", "results"],
                        [[d.day, d.studies, d.series, d.instances, d.results] for d in stats.days]
                        + [["total", *(stats.totals[k] for k in ("studies", "series",
                                                                 "instances", "results"))]])
    queue = format_table(["jobs queued", "running", "failed", "turnaround p50", "p95", "of"],
                         [[stats.queue["queued"], stats.queue["running"], stats.queue["failed"],
                           _seconds(stats.turnaround_p50), _seconds(stats.turnaround_p95),
                           f"{stats.turnaround_count} results"]])
    agreement = {a.label: a for a in stats.agreement}
    labels = format_table(
        ["label", "positive", "of results", "rate", "feedback agrees", "confirmed",
         "corrected"],
        [[r.label, r.positive, r.results, _ratio(r.rate),
          _ratio(agreement[r.label].ratio) if r.label in agreement else "-",
          agreement[r.label].confirmed if r.label in agreement else 0,
          agreement[r.label].corrected if r.label in agreement else 0] for r in stats.labels])
    return (f"since {stats.since:%Y-%m-%d} 00:00 UTC\n\n{days}\n\n{queue}\n\n{labels}\n"
            "(positive rate: results of these days; feedback: the newest word on each study "
            "and label, all time)")

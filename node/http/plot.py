"""The slice-probability curve as an inline SVG: each label over slice position."""

from __future__ import annotations

from dataclasses import dataclass

from ml.labels import LABELS
from node.http.schemas import SlicePoint

WIDTH, HEIGHT, PAD = 600, 160, 4


@dataclass(frozen=True)
class Curve:
    width: int
    height: int
    lines: list[tuple[str, str]]  # (label, SVG polyline points)


def curve_svg(points: list[SlicePoint]) -> Curve | None:
    if len(points) < 2:
        return None
    n = len(points) - 1
    lines = []
    for label in LABELS:
        coords = " ".join(
            f"{PAD + (WIDTH - 2 * PAD) * i / n:.1f},"
            f"{PAD + (HEIGHT - 2 * PAD) * (1 - p.probabilities.get(label, 0.0)):.1f}"
            for i, p in enumerate(points))
        lines.append((label, coords))
    return Curve(WIDTH, HEIGHT, lines)

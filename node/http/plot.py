"""The slice-probability curve as an inline SVG: each label over slice position, with its
axes named (x: slice 1..n in the order the model read the volume; y: probability 0-1)."""

from __future__ import annotations

from dataclasses import dataclass

from ml.labels import LABELS
from node.http.schemas import SlicePoint

WIDTH, HEIGHT, PAD = 600, 190, 4
LEFT, BOTTOM = 44, 32  # room for the y ticks and title; the x ticks and title
X_TITLE = "slice (in the order the model read the volume)"
Y_TITLE = "probability"


@dataclass(frozen=True)
class Curve:
    width: int
    height: int
    lines: list[tuple[str, str]]  # (label, SVG polyline points)
    box: tuple[float, float, float, float]  # the plot area: left, top, right, bottom (px)
    x_ticks: list[tuple[float, str]]  # (x px, text)
    y_ticks: list[tuple[float, str]]  # (y px, text)
    x_title: str = X_TITLE
    y_title: str = Y_TITLE


def curve_svg(points: list[SlicePoint]) -> Curve | None:
    """Polylines of each label's probability over the slices; None under two slices."""
    if len(points) < 2:
        return None
    n = len(points) - 1
    left, top, right, bottom = LEFT, PAD, WIDTH - PAD, HEIGHT - BOTTOM

    def x(i: int) -> float:
        return left + (right - left) * i / n

    def y(p: float) -> float:
        return top + (bottom - top) * (1 - p)

    lines = [(label, " ".join(f"{x(i):.1f},{y(p.probabilities.get(label, 0.0)):.1f}"
                              for i, p in enumerate(points)))
             for label in LABELS]
    x_ticks = [(x(i), str(i + 1)) for i in sorted({0, n // 2, n})]
    y_ticks = [(y(p), f"{p:g}") for p in (0.0, 0.5, 1.0)]
    return Curve(WIDTH, HEIGHT, lines, (left, top, right, bottom), x_ticks, y_ticks)

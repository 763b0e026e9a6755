"""Inline SVG line charts from the fleet's samples: no chart library, nothing loaded from elsewhere."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from apps.ops.fleet.figures import Sample

WIDTH, HEIGHT, PAD = 360, 90, 4


@dataclass(frozen=True)
class Series:
    label: str
    points: list[tuple[float, float]]  # (seconds ago, value), oldest first

    @property
    def latest(self) -> float | None:
        return self.points[-1][1] if self.points else None

    @property
    def peak(self) -> float:
        return max((v for _, v in self.points), default=0.0)


def queue_series(samples: Sequence[Sample], *, now: float) -> list[Series]:
    """Depth, arrivals per second and completions per second, from samples (newest first)."""
    ordered = sorted(samples, key=lambda s: s.t)
    depth = [(now - s.t, float(s.depth)) for s in ordered]
    arrivals: list[tuple[float, float]] = []
    completions: list[tuple[float, float]] = []
    for before, after in zip(ordered, ordered[1:], strict=False):
        dt = after.t - before.t
        if dt <= 0:
            continue
        done = max(0, after.finished - before.finished) / dt
        # What arrived = what is newly waiting + what started meanwhile.
        came = max(0.0, (after.depth - before.depth) + max(0, after.started - before.started)) / dt
        arrivals.append((now - after.t, came))
        completions.append((now - after.t, done))
    return [Series("depth", depth), Series("arrivals /s", arrivals), Series("completions /s", completions)]


def polyline(series: Series, *, span: float) -> str:
    """The ``points`` attribute of an SVG polyline: x from ``span`` seconds ago to now, y scaled to the peak."""
    if not series.points:
        return ""
    top = series.peak or 1.0
    coords = []
    for ago, value in series.points:
        x = PAD + (WIDTH - 2 * PAD) * (1 - min(ago, span) / span if span else 1)
        y = HEIGHT - PAD - (HEIGHT - 2 * PAD) * (value / top)
        coords.append(f"{x:.1f},{y:.1f}")
    return " ".join(coords)

"""The builds chart: one bar per build, its height the build's duration, stacked by phase (an SVG)."""

from __future__ import annotations

from rack.builds.record import PHASES
from rack.overview import CHART_BUILDS

HEIGHT = 120.0
BAR = 12
GAP = 4


def bars(builds: list[dict]) -> dict:
    """Lay out a bar per build (oldest first): a segment per phase, then the rest (queue, set-up)."""
    tallest = max((b["duration"] or 0.0 for b in builds), default=0.0) or 1.0
    scale = HEIGHT / tallest
    out = []
    for i, build in enumerate(builds):
        phases = build["phases"]
        total = build["duration"] or 0.0
        segments = [(name, phases[name]) for name in PHASES if phases.get(name)]
        other = total - sum(v for _, v in segments)
        if other > 0:
            segments.append(("other", other))
        y = HEIGHT
        rects = []
        for name, value in segments:
            h = value * scale
            y -= h
            rects.append({"phase": name, "y": round(y, 2), "h": round(h, 2), "seconds": value})
        out.append(
            {
                "build": build,
                "x": i * (BAR + GAP),
                "rects": rects,
                "failed": build["status"] == "failed",
            }
        )
    return {
        "bars": out,
        "width": max(len(builds), CHART_BUILDS) * (BAR + GAP),  # room for a full chart: bars keep their width
        "height": HEIGHT,
        "bar": BAR,
        "tallest": tallest if builds else 0.0,
        "phases": (*PHASES, "other"),
    }

"""Jinja filters for the console: times, durations and short ids as a person reads them."""

from __future__ import annotations

from datetime import UTC, datetime

from flask import Blueprint


def when(value: datetime | None) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC") if value else ""


def seconds(value: float | None) -> str:
    """A duration: `0.42 s`, `12.3 s`, `2 min 05 s`; a dash when there is none."""
    if value is None:
        return "–"
    if value < 10:
        return f"{value:.2f} s"
    if value < 60:
        return f"{value:.1f} s"
    minutes, rest = divmod(int(round(value)), 60)
    return f"{minutes} min {rest:02d} s"


def short(sha: str | None) -> str:
    return (sha or "")[:12]


def register(bp: Blueprint) -> None:
    bp.add_app_template_filter(when, "when")
    bp.add_app_template_filter(seconds, "seconds")
    bp.add_app_template_filter(short, "short")

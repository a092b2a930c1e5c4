"""Tables and info blocks laid out as Convox's CLI lays them out."""

from __future__ import annotations

from datetime import UTC, datetime

import click

ZERO = "0001-01-01T00:00:00Z"


def table(headers: list[str], rows: list[list[str]]) -> None:
    """Pad columns to their widest cell, join with two spaces, leave the last column unpadded."""
    widths = [max(len(str(r[i])) for r in [headers, *rows]) for i in range(len(headers))]
    for row in [headers, *rows]:
        cells = [str(c).ljust(widths[i]) if i < len(row) - 1 else str(c) for i, c in enumerate(row)]
        click.echo("  ".join(cells).rstrip())


def info(pairs: list[tuple[str, str]]) -> None:
    width = max(len(k) for k, _ in pairs)
    for key, value in pairs:
        click.echo(f"{key.ljust(width)}  {value}")


def parse_time(value: str) -> datetime | None:
    if not value or value == ZERO:
        return None
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def ago(value: str) -> str:
    t = parse_time(value)
    if t is None:
        return ""
    seconds = int((datetime.now(UTC) - t).total_seconds())
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size:
            n = seconds // size
            return f"{n} {unit}{'s' if n != 1 else ''} ago"
    return f"{seconds} second{'s' if seconds != 1 else ''} ago"


def elapsed(start: str, end: str) -> str:
    s, e = parse_time(start), parse_time(end)
    if s is None or e is None:
        return ""
    seconds = int((e - s).total_seconds())
    return f"{seconds // 60}m{seconds % 60}s" if seconds >= 60 else f"{seconds}s"

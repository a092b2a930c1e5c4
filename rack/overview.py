"""What a person looks at: apps, an app's builds, one build and an app's releases, each read in one call.

Shaped for reading (durations in seconds, the active release marked), not for Convox's wire format; the
console renders these. Imports the rack's base modules and `rack.builds`, never the pipeline.
"""

from __future__ import annotations

from datetime import UTC, datetime

from rack import apps
from rack.builds import record as builds
from rack.context import Rack
from rack.errors import Invalid
from rack.sql import apps as apps_sql
from rack.sql import builds as builds_sql
from rack.sql import releases as releases_sql

PER_PAGE = 20
MAX_PAGE = 1000
CHART_BUILDS = 50
MAX_RELEASES = 100


def duration(row: dict, *, now: datetime | None = None) -> float | None:
    """Seconds from a build's creation to its end (or to now while it runs); None before it ran."""
    if row["ended"]:
        end = row["ended"]
    elif row["status"] == "running":
        end = now or datetime.now(UTC)
    else:
        return None
    return max(0.0, (end - row["started"]).total_seconds())


def _build(row: dict, now: datetime) -> dict:
    return {**row, "phases": builds.phases(row), "duration": duration(row, now=now)}


def list_apps(rack: Rack) -> list[dict]:
    """Every app with its active release and its newest build's status and reason."""
    with rack.db.transaction() as conn:
        return apps_sql.list_with_last_build(conn)


def check_page(raw: str | None) -> int:
    """Read a page number (1 to MAX_PAGE); empty is the first page."""
    if raw is None or raw == "":
        return 1
    if not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw) <= MAX_PAGE:
        raise Invalid(f"page must be a whole number from 1 to {MAX_PAGE}, got {raw[:20]!r}")
    return int(raw)


def app_builds(rack: Rack, app: str, *, page: str | None = None) -> dict:
    """One page of an app's builds, newest first, and its last CHART_BUILDS builds oldest first."""
    number = check_page(page)
    now = datetime.now(UTC)
    with rack.db.transaction() as conn:
        row = apps.get(rack, app, conn)
        # one row past the page tells whether there is a next one
        rows = builds_sql.list_for_app(conn, app=app, limit=PER_PAGE + 1, offset=(number - 1) * PER_PAGE)
        recent = builds_sql.list_for_app(conn, app=app, limit=CHART_BUILDS)
    return {
        "app": row,
        "builds": [_build(r, now) for r in rows[:PER_PAGE]],
        "page": number,
        "more": len(rows) > PER_PAGE,
        "chart": [_build(r, now) for r in reversed(recent)],
    }


def build(rack: Rack, app: str, build_id: str) -> dict:
    """One build with its phases and duration, and the app it belongs to."""
    row = builds.get(rack, app, build_id)
    return {"app": apps.get(rack, app), "build": _build(row, datetime.now(UTC))}


def app_releases(rack: Rack, app: str) -> dict:
    """An app's newest releases, each marked active or not, with the build each was made from."""
    with rack.db.transaction() as conn:
        row = apps.get(rack, app, conn)
        rows = releases_sql.list_for_app(conn, app=app, limit=MAX_RELEASES)
    active = next((r for r in rows if r["id"] == row["release"]), None)
    out = []
    for r in rows:
        older = active is not None and r["created"] < active["created"]
        out.append({**r, "active": r["id"] == row["release"], "older": older})
    return {"app": row, "releases": out}

"""Remove stored contents and trees that no build within the retention needs.

Kept: contents uploaded, asked about or named by a tree within `RACK_SOURCE_RETENTION`, and every content
of a tree that a build started within the retention (or not yet ended) was made from. The rest goes: its
row first, then its object, or its pack once no content of the pack is left (a pack never gains contents
after its upload). A pack no content row names (its upload failed, or its worker died, between storing it
and recording its contents) is removed once older than `PACK_GRACE`, so an upload in flight keeps its pack.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import UTC, datetime, timedelta

from rack import apps, objects
from rack.context import Rack
from rack.errors import RackError
from rack.sources import contents, worktree
from rack.sql import sources as sql

log = logging.getLogger(__name__)
PACK_GRACE = 24 * 3600  # seconds a pack with no recorded contents is left to its upload
PACKS_LISTED = 100_000  # an app's packs looked at per sweep (oldest first)
_last = {"at": 0.0}
_lock = threading.Lock()


def sweep(rack: Rack, *, retention: int | None = None, now: datetime | None = None) -> dict[str, int]:
    """Sweep every app once; return how many contents, trees and orphaned packs were removed."""
    keep = rack.settings.source_retention if retention is None else retention
    cutoff = (now or datetime.now(UTC)) - timedelta(seconds=keep)
    with rack.db.transaction() as conn:
        gone = sql.sweep_contents(conn, cutoff=cutoff)
        trees = sql.sweep_trees(conn, cutoff=cutoff)
    packs: dict[str, set[str]] = {}
    for row in gone:
        if row["pack"]:
            packs.setdefault(row["app"], set()).add(row["pack"])
            continue
        _delete(rack, contents.key(row["app"], row["sha256"]))
    for app, names in packs.items():  # a pack goes with the last of its contents
        with rack.db.transaction() as conn:
            used = sql.packs_in_use(conn, app=app, packs=sorted(names))
        for name in sorted(names - used):
            _delete(rack, contents.pack_key(app, name))
    orphans = sweep_orphans(rack, before=(now or datetime.now(UTC)) - timedelta(seconds=PACK_GRACE))
    return {"contents": len(gone), "trees": trees, "packs": orphans}


def sweep_orphans(rack: Rack, *, before: datetime) -> int:
    """Remove the packs made before `before` that no content row names; return how many."""
    removed = 0
    for app in (row["name"] for row in apps.list_all(rack)):
        try:
            keys = rack.store.list_keys(f"{app}/{objects.RESERVED}/packs", limit=PACKS_LISTED)
        except RackError as exc:
            log.warning("sweep: could not list the packs of %s: %s", app, exc)
            continue
        names = [key.rpartition("/")[2] for key in keys]
        old = [n for n in names if (made := contents.pack_made(n)) is not None and made < before.timestamp()]
        if not old:
            continue
        with rack.db.transaction() as conn:
            used = sql.packs_in_use(conn, app=app, packs=old)
        for name in sorted(set(old) - used):
            removed += _delete(rack, contents.pack_key(app, name))
    return removed


def _delete(rack: Rack, key: str) -> bool:
    try:
        rack.store.delete(key)
    except RackError as exc:
        log.warning("sweep: %s stays in the store: %s", key, exc)
        return False
    return True


def sweep_if_due(rack: Rack) -> dict[str, int] | None:
    """Sweep when `RACK_SOURCE_SWEEP_INTERVAL` has passed since this process last did (the reaper's timer)."""
    with _lock:
        if time.monotonic() - _last["at"] < rack.settings.source_sweep_interval and _last["at"]:
            return None
        _last["at"] = time.monotonic()
    removed = worktree.sweep(rack)  # this host's folders of apps gone or unused for the retention
    if removed:
        log.info("removed the source folders of %s", ", ".join(removed))
    return sweep(rack)

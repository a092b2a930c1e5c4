"""Ending builds from outside their worker: cancel, and the reaper for lost, expired and overdue builds."""

from __future__ import annotations

import logging

from rack import apps, objects
from rack.context import Rack
from rack.errors import NotFound, RackError
from rack.ids import check_id
from rack.logs.stream import BuildLog
from rack.reasons import Reason
from rack.sql import builds as sql

log = logging.getLogger(__name__)

# A worker may overrun the build timeout by this much while it stops the build itself.
TIMEOUT_GRACE = 60


def logs_url(row: dict) -> str:
    return objects.url(row["app"], objects.build_log_key(row["id"]))


def store_log(rack: Rack, row: dict) -> None:
    """Copy the build's stream into the object store, where finished builds' logs are read from."""
    objects.store_build_log(rack, row["app"], row["id"], BuildLog(rack.redis, row["id"]).reader())


def fail(
    rack: Rack, row: dict, *, reason: str, only_from: tuple[str, ...] = ("created", "running")
) -> dict | None:
    """Fail a build unless something ended it first; log why, store the log, end the stream."""
    with rack.db.transaction() as conn:
        ended = sql.finish(
            conn,
            id=row["id"],
            status="failed",
            reason=reason,
            only_from=only_from,
            fields={"logs": logs_url(row)},
        )
    if ended is None:
        return None
    build_log = BuildLog(rack.redis, row["id"])
    try:
        build_log.append(f"ERROR: {reason}\n")
        # End the stream before storing it: the end refuses later lines, so what is stored is what
        # every follower saw, even when the build's worker still writes a line or two.
        build_log.end("failed", ttl=rack.settings.log_stream_ttl)
        store_log(rack, ended)
    except RackError as exc:  # Redis or the store is down: the build is failed all the same
        log.warning("build %s failed (%s) but its log could not be closed: %s", row["id"], reason, exc)
    return ended


def cancel(rack: Rack, app: str, build_id: str) -> dict:
    """Cancel a build in any state: a queued one never runs, a running one is stopped by its worker."""
    check_id("build", build_id)
    apps.get(rack, app)
    with rack.db.transaction() as conn:
        row = sql.request_cancel(conn, app=app, id=build_id) or sql.get(conn, app=app, id=build_id)
    if row is None or row["app"] != app:
        raise NotFound(f"build not found: {build_id}")
    if row["status"] in ("created", "running"):
        fail(rack, row, reason=Reason.CANCELLED("the build was cancelled"))
    with rack.db.transaction() as conn:
        row = sql.get(conn, app=app, id=build_id)
    if row is None:  # the app was deleted meanwhile
        raise NotFound(f"build not found: {build_id}")
    return row


def retry(rack: Rack, row: dict) -> bool:
    """Queue a lost worker's build to run again: mark where the retry begins in its log, then enqueue it.

    The log keeps every line of the attempt before; the next worker's lines follow the mark. False when
    the build moved on meanwhile (its worker came back, or something ended it).
    """
    attempts = rack.settings.build_attempts
    with rack.db.transaction() as conn:
        again = sql.requeue_lost(
            conn, id=row["id"], process=row["process"], older_than_seconds=rack.settings.heartbeat_timeout
        )
    if again is None:
        return False
    mark = (
        f"--- attempt {again['attempt']} of {attempts} starts here: the worker running this build"
        f" ({row['process']}) stopped responding for over {rack.settings.heartbeat_timeout}s;"
        " the build runs again on another worker ---\n"
    )
    try:
        BuildLog(rack.redis, row["id"]).append(mark)
    except RackError as exc:
        log.warning("build %s: the retry could not be marked in its log: %s", row["id"], exc)
    try:
        rack.enqueue_build(row["id"])
    except Exception as exc:  # the broker is away: the next worker free still takes it (any task will)
        log.warning("build %s was requeued but no task could be queued for it: %s", row["id"], exc)
    return True


def reap(rack: Rack) -> list[tuple[str, str]]:
    """Fail builds whose worker stopped heartbeating, that waited too long, or that ran past their timeout
    (an outside builder's too: one that dies before it reports would otherwise stay `created`)."""
    settings = rack.settings
    with rack.db.transaction() as conn:
        lost = sql.stale_running(conn, older_than_seconds=settings.heartbeat_timeout)
        expired = sql.expired_created(conn, older_than_seconds=settings.queue_expiry)
        overdue = sql.overdue_running(conn, default_timeout=settings.build_timeout, grace=TIMEOUT_GRACE)
        outside = sql.overdue_outside(conn, default_timeout=settings.build_timeout, grace=TIMEOUT_GRACE)
    done = []
    for row in lost:
        if row["attempt"] < settings.build_attempts and retry(rack, row):
            done.append((row["id"], f"retried: attempt {row['attempt'] + 1} of {settings.build_attempts}"))
            continue
        reason = (
            f"{Reason.WORKER_LOST}: the worker running this build ({row['process']}) stopped responding"
            f" for over {settings.heartbeat_timeout}s"
        )
        if fail(rack, row, reason=reason, only_from=("running",)):
            done.append((row["id"], reason))
    for row in expired:
        reason = f"{Reason.EXPIRED}: no worker started this build within {settings.queue_expiry}s"
        if fail(rack, row, reason=reason, only_from=("created",)):
            done.append((row["id"], reason))
    for row in overdue:
        reason = f"{Reason.TIMEOUT}: the build ran longer than its limit of {row['timeout']}s"
        if fail(rack, row, reason=reason, only_from=("running",)):
            done.append((row["id"], reason))
    for row in outside:
        reason = (
            f"{Reason.TIMEOUT}: the outside builder did not report this build complete or failed"
            f" within its limit of {row['timeout']}s"
        )
        if fail(rack, row, reason=reason):
            done.append((row["id"], reason))
    for build_id, reason in done:
        log.warning("reaped build %s: %s", build_id, reason)
    return done

"""Builds: record a request, hand it to a worker, report on it."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlparse

from rack import apps, events, giturl, objects
from rack.builds import queue
from rack.context import Rack
from rack.errors import Conflict, Forbidden, Invalid, NotFound, Unavailable
from rack.ids import check_id, new_id
from rack.logs.stream import BuildLog
from rack.reasons import Reason
from rack.scrub import scrub
from rack.sources import tree
from rack.sql import builds as sql
from rack.sql import releases as releases_sql
from rack.sql import sources as sources_sql
from rack.timefmt import parse_convox, rfc3339

STATUSES = ("created", "running", "complete", "failed")
FINAL = ("complete", "failed")
PHASES = ("fetch", "extract", "build", "push", "release")  # the timed phases of a build, in order
ARG_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def serialize(row: dict) -> dict:
    """Shape a build row as Convox's Build JSON, plus this rack's added fields."""
    return {
        "id": row["id"],
        "app": row["app"],
        "description": row["description"],
        "entrypoint": row["entrypoint"],
        "git-sha": row["git_sha"],
        "logs": row["logs"],
        "manifest": row["manifest"],
        "process": row["process"],
        "release": row["release"],
        "reason": row["reason"],
        "repository": row["repository"],
        "status": row["status"],
        "started": rfc3339(row["started"]),
        "ended": rfc3339(row["ended"]) if row["ended"] else rfc3339(None),
        "images": row["images"],
        "phases": phases(row),
        "attempt": row.get("attempt", 1),
        "position": row.get("position", 0),
    }


def phases(row: dict) -> dict[str, float]:
    """The seconds each phase of a build took so far, in the order they run (JSONB keeps no order)."""
    seconds = row.get("phases") or {}
    return {name: seconds[name] for name in PHASES if name in seconds}


def parse_build_args(values: list[str]) -> list[str]:
    """Check `K=V` (or bare `K`) build args; values may hold anything, names may not."""
    out = []
    for item in values:
        if not item:
            continue
        name = item.split("=", 1)[0]
        if not ARG_NAME.fullmatch(name):
            raise Invalid(
                f"invalid build arg {item!r}: expected NAME=VALUE with NAME like [A-Za-z_][A-Za-z0-9_]*"
            )
        out.append(item)
    return out


def check_source(rack: Rack, app: str, url: str) -> str:
    """Accept an `object://` URL of an existing object of this app, a `manifest://` tree, or a git URL."""
    if not url:
        raise Invalid("url is required: upload the source as an object and pass object://<app>/<key>")
    if url.startswith("object://"):
        src_app, key = objects.parse_url(url)
        if src_app != app:
            raise Invalid(f"source {url} belongs to another app: upload it to app {app}")
        if not rack.store.exists(f"{app}/{key}"):
            raise NotFound(f"source object not found: {url}")
        return objects.url(app, key)
    if url.startswith(tree.SCHEME):
        src_app, _ = tree.parse_url(url)
        if src_app != app:
            raise Invalid(f"source {url} belongs to another app: send the source to app {app}")
        with rack.db.transaction() as conn:
            if sources_sql.get_tree(conn, app=app, digest=tree.parse_url(url)[1]) is None:
                raise Conflict(f"source tree not found: {url} (upload the source again)")
        return url
    parsed = urlparse(url)
    if parsed.scheme in ("https", "http", "git", "ssh", "file") and parsed.path:
        if parsed.scheme in ("https", "http") and not rack.settings.git_allow_private:
            check_public_git_url(url)
        return url
    raise Invalid(
        f"unsupported source url {url!r}: use object://<app>/<key> or a git URL like https://host/repo.git#ref"
    )


def check_public_git_url(url: str) -> None:
    """Refuse a git URL whose host resolves to a loopback, link-local or private address (400).

    A host that does not resolve now passes here: the worker checks again, and pins git to the address
    it checked, before cloning.
    """
    try:
        _address, problem = giturl.private_address(url)
    except ValueError:
        return
    if problem:
        raise Invalid(
            f"git url {scrub(url)!r} is refused: {problem}; only public hosts are cloned "
            "(RACK_GIT_ALLOW_PRIVATE=true lets a rack on a trusted network clone from private ones)"
        )


def create(
    rack: Rack,
    app: str,
    *,
    url: str,
    build_args: list[str] | None = None,
    description: str = "",
    manifest: str = "",
    no_cache: bool = False,
    development: bool = False,
    git_sha: str = "",
    promote: bool = False,
    webhook: str = "",
    also: Callable[[Any, dict], None] | None = None,
) -> dict:
    """Record a build as `created`, commit, then enqueue it for a worker.

    `also(conn, row)` runs in the transaction that inserts the build (and may abort it by raising).
    Builds of one `webhook` run one after another, in the order they were made.
    """
    apps.get(rack, app)
    source = check_source(rack, app, url)
    options = {
        "build_args": parse_build_args(build_args or []),
        "manifest": manifest or "convox.yml",
        "no_cache": bool(no_cache),
        "development": bool(development),
    }
    if not source.startswith("object://"):  # a git URL's credentials are kept sealed, not in source_url
        source, user, password = giturl.split_credentials(source)
        if user or password:
            options["git_credentials"] = giturl.seal(rack.settings.password, user, password)
    if promote:  # the pipeline promotes the release when the build completes (push webhooks ask for it)
        options["promote"] = True
    objects.normalize_key(str(options["manifest"]))  # refuses `..` in the manifest path
    with rack.db.transaction() as conn:
        row = sql.insert(
            conn,
            id=new_id("B"),
            app=app,
            source_url=source,
            options=options,
            description=description,
            git_sha=git_sha,
            webhook=webhook,
        )
        if also is not None:
            also(conn, row)
    try:
        rack.enqueue_build(row["id"])
    except Exception as exc:  # the broker is down: fail the build now rather than leave it queued forever
        with rack.db.transaction() as conn:
            sql.finish(
                conn,
                id=row["id"],
                status="failed",
                reason=Reason.QUEUE(f"the build queue is unreachable ({type(exc).__name__})"),
            )
        raise Unavailable("the build queue (Redis) is unreachable; try again shortly") from exc
    events.emit(rack, "build:create", app=app, data={"id": row["id"]})
    return row


def get(rack: Rack, app: str, build_id: str) -> dict:
    check_id("build", build_id)
    with rack.db.transaction() as conn:
        apps.get(rack, app, conn)
        row = sql.get(conn, app=app, id=build_id)
        if row is not None and row["status"] == "created":
            row["position"] = queue.position(conn, build_id)
    if row is None:
        raise NotFound(f"build not found: {build_id}")
    return row


def list_for_app(rack: Rack, app: str, *, limit: int = 10) -> list[dict]:
    with rack.db.transaction() as conn:
        apps.get(rack, app, conn)
        return sql.list_for_app(conn, app=app, limit=limit)


def update(rack: Rack, app: str, build_id: str, changes: dict[str, str]) -> dict:
    """Apply a Convox `PUT builds/{id}` (how external builders report progress).

    Status moves only forward, each move one guarded statement: `created` → `running` (which then
    heartbeats on every PUT), `created`/`running` → `complete`/`failed` (which ends the log stream).
    """
    row = get(rack, app, build_id)
    fields: dict = {}
    if changes.get("logs") is not None:
        own = objects.url(app, objects.build_log_key(build_id))
        if (
            changes["logs"] != own
            or objects.outside_log_build(rack, app, objects.build_log_key(build_id)) is None
        ):
            raise Forbidden(
                f"logs is set by the rack only (or by an --external build's own builder, as {own}, before "
                f"the build ends): the log of build {build_id} is stored at {own} when the build ends"
            )
        fields["logs"] = own
    for key in ("entrypoint", "manifest", "release", "description"):
        if changes.get(key) is not None:
            fields[key] = changes[key]
    for key in ("started", "ended"):
        if changes.get(key):
            fields[key] = parse_convox(changes[key])
    status = changes.get("status") or row["status"]
    if status not in STATUSES:
        raise Invalid(f"invalid status {status!r}: use one of {', '.join(STATUSES)}")
    if status == "complete" and row["status"] != "complete" and row["repository"] and not row["images"]:
        from rack import external  # the images an external build pushed, checked and recorded

        fields["images"] = external.pushed(rack, {**row, **fields})
    with rack.db.transaction() as conn:
        if fields.get("release") and releases_sql.get(conn, app=app, id=fields["release"]) is None:
            raise NotFound(f"release not found: {fields['release']}")
        if status != row["status"]:
            row = _move(conn, row, status)
        if row["status"] == "running":
            fields["heartbeat"] = datetime.now(UTC)
        updated = sql.update(conn, id=build_id, fields=fields) if fields else row
        if updated is None:
            raise NotFound(f"build not found: {build_id}")
    if changes.get("status") in FINAL:
        BuildLog(rack.redis, build_id).end(updated["status"], ttl=rack.settings.log_stream_ttl)
    return updated


def _move(conn, row: dict, status: str) -> dict:
    """Move a build's status forward in one guarded statement, or refuse with 409."""
    moved = None
    if status == "running" and row["status"] == "created":
        moved = sql.mark_running(conn, id=row["id"], process="external")
    elif status in FINAL and row["status"] in ("created", "running"):
        moved = sql.finish(conn, id=row["id"], status=status, reason=row["reason"])
    if moved is None:
        raise Conflict(f"build {row['id']} is {row['status']}: it can not become {status}")
    return moved

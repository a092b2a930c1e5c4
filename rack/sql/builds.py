"""SQL for builds. State changes are single guarded statements so two actors cannot both win."""

from __future__ import annotations

from psycopg2.extras import Json

from rack.db import execute, fetchall, fetchone, returning

COLUMNS = {
    "description",
    "entrypoint",
    "heartbeat",
    "git_sha",
    "logs",
    "manifest",
    "process",
    "release",
    "reason",
    "repository",
    "started",
    "ended",
    "status",
    "images",
    "phases",
    "log_lines",
    "log_bytes",
    "inputs",
}


def insert(
    conn,
    *,
    id: str,
    app: str,
    source_url: str,
    options: dict,
    description: str,
    git_sha: str,
    manifest: str = "",
    status: str = "created",
    webhook: str = "",
) -> dict:
    return returning(
        conn,
        "INSERT INTO builds (id, app, source_url, options, description, git_sha, manifest, status, webhook)"
        " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING *",
        (id, app, source_url, Json(options), description, git_sha, manifest, status, webhook),
    )


def earlier_unfinished(conn, *, webhook: str, id: str, started) -> dict | None:
    """The oldest build of the same webhook, made before this one, that has not ended yet."""
    return fetchone(
        conn,
        "SELECT id, status FROM builds WHERE webhook = %s AND status IN ('created', 'running')"
        " AND (started, id) < (%s, %s) ORDER BY started, id LIMIT 1",
        (webhook, started, id),
    )


def get(conn, *, app: str, id: str) -> dict | None:
    return fetchone(conn, "SELECT * FROM builds WHERE app = %s AND id = %s", (app, id))


def get_by_id(conn, *, id: str) -> dict | None:
    return fetchone(conn, "SELECT * FROM builds WHERE id = %s", (id,))


def list_for_app(conn, *, app: str, limit: int, offset: int = 0) -> list[dict]:
    return fetchall(
        conn,
        "SELECT * FROM builds WHERE app = %s ORDER BY started DESC, id DESC LIMIT %s OFFSET %s",
        (app, limit, offset),
    )


def complete_with_inputs(conn, *, app: str, inputs: str, other_than: str) -> dict | None:
    """The app's latest complete build made from these inputs (see rack.pipeline.inputs)."""
    return fetchone(
        conn,
        "SELECT * FROM builds WHERE app = %s AND inputs = %s AND status = 'complete' AND id <> %s"
        " AND images <> '{}'::jsonb ORDER BY ended DESC NULLS LAST, id DESC LIMIT 1",
        (app, inputs, other_than),
    )


def latest_images(conn, *, app: str) -> dict:
    """Return the images of the app's latest complete build ({} when it has none)."""
    row = fetchone(
        conn,
        "SELECT images FROM builds WHERE app = %s AND status = 'complete' AND images <> '{}'::jsonb"
        " ORDER BY ended DESC NULLS LAST, id DESC LIMIT 1",
        (app,),
    )
    return (row or {}).get("images") or {}


def update(conn, *, id: str, fields: dict, only_from: tuple[str, ...] | None = None) -> dict | None:
    """Set fields on a build; with `only_from`, only while its status is one of those."""
    assert set(fields) <= COLUMNS, set(fields) - COLUMNS
    sets = ", ".join(f"{name} = %({name})s" for name in fields)
    params = {k: Json(v) if isinstance(v, dict) else v for k, v in fields.items()}
    params["_id"] = id
    where = "id = %(_id)s"
    if only_from is not None:
        where += " AND status = ANY(%(_from)s)"
        params["_from"] = list(only_from)
    return fetchone(conn, f"UPDATE builds SET {sets} WHERE {where} RETURNING *", params)


def set_phases(conn, *, id: str, process: str, phases: dict) -> int:
    """Record a build's phase timings, unless another process has taken the build since."""
    return execute(
        conn, "UPDATE builds SET phases = %s WHERE id = %s AND process = %s", (Json(phases), id, process)
    )


def mark_running(conn, *, id: str, process: str) -> dict | None:
    """Claim a created build for one worker; None when it is no longer `created`."""
    return fetchone(
        conn,
        "UPDATE builds SET status = 'running', process = %s, running_at = now(), heartbeat = now()"
        " WHERE id = %s AND status = 'created' AND NOT cancel_requested RETURNING *",
        (process, id),
    )


def heartbeat(conn, *, id: str, process: str) -> dict | None:
    return fetchone(
        conn,
        "UPDATE builds SET heartbeat = now() WHERE id = %s AND status = 'running' AND process = %s"
        " RETURNING cancel_requested",
        (id, process),
    )


def still_running(conn, *, id: str, process: str) -> dict | None:
    """The build's cancel flag while it runs on `process`; None once it ended or moved elsewhere."""
    return fetchone(
        conn,
        "SELECT cancel_requested FROM builds WHERE id = %s AND status = 'running' AND process = %s",
        (id, process),
    )


def finish(
    conn,
    *,
    id: str,
    status: str,
    reason: str = "",
    fields: dict | None = None,
    only_from: tuple[str, ...] = ("created", "running"),
    process: str | None = None,
) -> dict | None:
    """End a build once: the first of worker, reaper or canceller to get here wins."""
    extra = dict(fields or {})
    extra.update(status=status, reason=reason)
    sets = ", ".join(f"{name} = %({name})s" for name in extra)
    params = {k: Json(v) if isinstance(v, dict) else v for k, v in extra.items()}
    params.update(_id=id, _from=list(only_from), _process=process)
    where = "id = %(_id)s AND status = ANY(%(_from)s)"
    if process is not None:
        where += " AND process = %(_process)s"
    return fetchone(conn, f"UPDATE builds SET {sets}, ended = now() WHERE {where} RETURNING *", params)


def request_cancel(conn, *, app: str, id: str) -> dict | None:
    return fetchone(
        conn,
        "UPDATE builds SET cancel_requested = true"
        " WHERE app = %s AND id = %s AND status IN ('created', 'running') RETURNING *",
        (app, id),
    )


def requeue_lost(conn, *, id: str, process: str, older_than_seconds: int) -> dict | None:
    """Put a running build whose worker stopped heartbeating back in the queue, one attempt further.

    Only builds the rack's workers run: one an outside builder reports on (PUT) is not the rack's to rerun.
    """
    return fetchone(
        conn,
        "UPDATE builds SET status = 'created', attempt = attempt + 1, process = '', heartbeat = NULL,"
        " running_at = NULL WHERE id = %s AND status = 'running' AND process = %s"
        " AND process <> 'external' AND repository = '' AND NOT cancel_requested"
        " AND heartbeat < now() - make_interval(secs => %s) RETURNING *",
        (id, process, older_than_seconds),
    )


def stale_running(conn, *, older_than_seconds: int) -> list[dict]:
    """Running builds whose rack process stopped heartbeating (an outside builder's are `overdue_outside`)."""
    return fetchall(
        conn,
        "SELECT * FROM builds WHERE status = 'running' AND NOT (process = 'external' AND repository <> '')"
        " AND heartbeat < now() - make_interval(secs => %s)",
        (older_than_seconds,),
    )


def overdue_outside(conn, *, default_timeout: int, grace: int) -> list[dict]:
    """Builds an outside builder makes (`--external`) not ended within the app's (or rack's) build timeout.

    Such a builder reports only when it is done, and may die first: nothing else would end them.
    """
    return fetchall(
        conn,
        "SELECT b.*, COALESCE(a.build_timeout, %(default)s) AS timeout FROM builds b"
        " JOIN apps a ON a.name = b.app WHERE b.status IN ('created', 'running')"
        " AND b.repository <> '' AND b.process IN ('', 'external')"
        " AND b.started < now()"
        " - make_interval(secs => COALESCE(a.build_timeout, %(default)s) + %(grace)s)",
        {"default": default_timeout, "grace": grace},
    )


def expired_created(conn, *, older_than_seconds: int) -> list[dict]:
    return fetchall(
        conn,
        "SELECT * FROM builds WHERE status = 'created' AND repository = ''"
        " AND started < now() - make_interval(secs => %s)",
        (older_than_seconds,),
    )


def overdue_running(conn, *, default_timeout: int, grace: int) -> list[dict]:
    """Running builds past their app's (or the rack's) build timeout plus a grace period."""
    return fetchall(
        conn,
        "SELECT b.*, COALESCE(a.build_timeout, %(default)s) AS timeout FROM builds b"
        " JOIN apps a ON a.name = b.app WHERE b.status = 'running'"
        " AND b.running_at < now()"
        " - make_interval(secs => COALESCE(a.build_timeout, %(default)s) + %(grace)s)",
        {"default": default_timeout, "grace": grace},
    )

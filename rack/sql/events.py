"""SQL for outbound event webhooks."""

from __future__ import annotations

from rack.db import execute, fetchall, fetchone, returning


def insert(conn, *, id: str, app: str | None, url: str, secret: str) -> dict:
    return returning(
        conn,
        "INSERT INTO event_hooks (id, app, url, secret) VALUES (%s, %s, %s, %s) RETURNING *",
        (id, app, url, secret),
    )


def get(conn, *, id: str) -> dict | None:
    return fetchone(conn, "SELECT * FROM event_hooks WHERE id = %s", (id,))


def list_for(conn, *, app: str | None) -> list[dict]:
    """The hooks of one app (app given) or the rack's own (app None)."""
    return fetchall(
        conn, "SELECT * FROM event_hooks WHERE app IS NOT DISTINCT FROM %s ORDER BY created, id", (app,)
    )


def receiving(conn, *, app: str) -> list[dict]:
    """Every hook that receives an app's events: the rack's and the app's own."""
    return fetchall(
        conn, "SELECT * FROM event_hooks WHERE app IS NULL OR app = %s ORDER BY created, id", (app,)
    )


def delete(conn, *, id: str, app: str | None) -> int:
    return execute(conn, "DELETE FROM event_hooks WHERE id = %s AND app IS NOT DISTINCT FROM %s", (id, app))

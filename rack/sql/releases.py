"""SQL for releases."""

from __future__ import annotations

from rack.db import fetchall, fetchone, returning


def insert(conn, *, id: str, app: str, build: str, env: str, manifest: str, description: str) -> dict:
    return returning(
        conn,
        "INSERT INTO releases (id, app, build, env, manifest, description)"
        " VALUES (%s, %s, %s, %s, %s, %s) RETURNING *",
        (id, app, build, env, manifest, description),
    )


def get(conn, *, app: str, id: str) -> dict | None:
    return fetchone(conn, "SELECT * FROM releases WHERE app = %s AND id = %s", (app, id))


def latest(conn, *, app: str) -> dict | None:
    return fetchone(
        conn, "SELECT * FROM releases WHERE app = %s ORDER BY created DESC, id DESC LIMIT 1", (app,)
    )


def list_for_app(conn, *, app: str, limit: int) -> list[dict]:
    return fetchall(
        conn, "SELECT * FROM releases WHERE app = %s ORDER BY created DESC, id DESC LIMIT %s", (app, limit)
    )

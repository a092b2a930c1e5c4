"""SQL for push webhooks."""

from __future__ import annotations

from rack.db import execute, fetchall, fetchone, returning


def insert(conn, *, id: str, app: str, repo: str, branch: str, secret: str, promote: bool) -> dict:
    return returning(
        conn,
        "INSERT INTO webhooks (id, app, repo, branch, secret, promote) VALUES (%s, %s, %s, %s, %s, %s)"
        " RETURNING *",
        (id, app, repo, branch, secret, promote),
    )


def get(conn, *, id: str) -> dict | None:
    return fetchone(conn, "SELECT * FROM webhooks WHERE id = %s", (id,))


def list_for_app(conn, *, app: str) -> list[dict]:
    return fetchall(conn, "SELECT * FROM webhooks WHERE app = %s ORDER BY created DESC, id DESC", (app,))


def delete(conn, *, app: str, id: str) -> int:
    return execute(conn, "DELETE FROM webhooks WHERE app = %s AND id = %s", (app, id))

"""SQL for push webhooks."""

from __future__ import annotations

from rack.db import execute, fetchall, fetchone, returning


def insert(
    conn, *, id: str, app: str, repo: str, credentials: str, branch: str, secret: str, promote: bool
) -> dict:
    return returning(
        conn,
        "INSERT INTO webhooks (id, app, repo, credentials, branch, secret, promote)"
        " VALUES (%s, %s, %s, %s, %s, %s, %s) RETURNING *",
        (id, app, repo, credentials, branch, secret, promote),
    )


def get(conn, *, id: str) -> dict | None:
    return fetchone(conn, "SELECT * FROM webhooks WHERE id = %s", (id,))


def list_for_app(conn, *, app: str) -> list[dict]:
    return fetchall(conn, "SELECT * FROM webhooks WHERE app = %s ORDER BY created DESC, id DESC", (app,))


def delete(conn, *, app: str, id: str) -> int:
    return execute(conn, "DELETE FROM webhooks WHERE app = %s AND id = %s", (app, id))


def add_delivery(conn, *, webhook: str, delivery: str, body_sha256: str, build: str) -> bool:
    """Record a delivery that built `build`; False when this delivery (or this body) was seen before."""
    row = fetchone(
        conn,
        "INSERT INTO webhook_deliveries (webhook, delivery, body_sha256, build) VALUES (%s, %s, %s, %s)"
        " ON CONFLICT DO NOTHING RETURNING build",
        (webhook, delivery, body_sha256, build),
    )
    return row is not None


def find_delivery(conn, *, webhook: str, delivery: str, body_sha256: str) -> dict | None:
    return fetchone(
        conn,
        "SELECT * FROM webhook_deliveries WHERE webhook = %s AND ((delivery = %s AND delivery <> '')"
        " OR body_sha256 = %s) ORDER BY created LIMIT 1",
        (webhook, delivery, body_sha256),
    )

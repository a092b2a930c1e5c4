"""SQL for apps."""

from __future__ import annotations

from rack.db import execute, fetchall, fetchone


def insert(conn, *, name: str, generation: str = "2", build_timeout: int | None = None) -> dict | None:
    return fetchone(
        conn,
        "INSERT INTO apps (name, generation, build_timeout) VALUES (%s, %s, %s)"
        " ON CONFLICT (name) DO NOTHING RETURNING *",
        (name, generation, build_timeout),
    )


def set_build_timeout(conn, *, name: str, build_timeout: int | None) -> int:
    return execute(conn, "UPDATE apps SET build_timeout = %s WHERE name = %s", (build_timeout, name))


def get(conn, *, name: str, lock: bool = False) -> dict | None:
    return fetchone(conn, "SELECT * FROM apps WHERE name = %s" + (" FOR UPDATE" if lock else ""), (name,))


def list_all(conn) -> list[dict]:
    return fetchall(conn, "SELECT * FROM apps ORDER BY name")


def delete(conn, *, name: str) -> int:
    return execute(conn, "DELETE FROM apps WHERE name = %s", (name,))


def set_release(conn, *, name: str, release: str) -> int:
    return execute(conn, "UPDATE apps SET release = %s WHERE name = %s", (release, name))


def list_with_last_build(conn) -> list[dict]:
    """Every app with its newest build's id, status, reason and start (None when it has no build)."""
    return fetchall(
        conn,
        "SELECT a.*, b.id AS build_id, b.status AS build_status, b.reason AS build_reason,"
        " b.started AS build_started FROM apps a LEFT JOIN LATERAL"
        " (SELECT id, status, reason, started FROM builds WHERE app = a.name"
        "  ORDER BY started DESC, id DESC LIMIT 1) b ON true ORDER BY a.name",
    )


def set_locked(conn, *, name: str, locked: bool) -> int:
    return execute(conn, "UPDATE apps SET locked = %s WHERE name = %s", (locked, name))

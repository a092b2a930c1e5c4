"""SQL for apps."""

from __future__ import annotations

from rack.db import execute, fetchall, fetchone


def insert(conn, *, name: str, generation: str = "2") -> dict | None:
    return fetchone(
        conn,
        "INSERT INTO apps (name, generation) VALUES (%s, %s) ON CONFLICT (name) DO NOTHING RETURNING *",
        (name, generation),
    )


def get(conn, *, name: str, lock: bool = False) -> dict | None:
    return fetchone(conn, "SELECT * FROM apps WHERE name = %s" + (" FOR UPDATE" if lock else ""), (name,))


def list_all(conn) -> list[dict]:
    return fetchall(conn, "SELECT * FROM apps ORDER BY name")


def delete(conn, *, name: str) -> int:
    return execute(conn, "DELETE FROM apps WHERE name = %s", (name,))


def set_release(conn, *, name: str, release: str) -> int:
    return execute(conn, "UPDATE apps SET release = %s WHERE name = %s", (release, name))

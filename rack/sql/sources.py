"""SQL for content-addressed sources: stored contents, trees, and what the sweep may remove."""

from __future__ import annotations

from psycopg2.extras import Json, execute_values

from rack.db import fetchall, fetchone


def touch_present(conn, *, app: str, shas: list[str], lag: int = 0) -> set[str]:
    """Mark the named contents as just used (those marked within `lag` seconds are left as they are);
    return those the app has."""
    # One index pass over the named rows; the stale ones, looked up again by key, are updated. The
    # sha256s go as one string (hex digits: no comma in them): an array of thousands of quoted literals
    # costs Postgres more to parse than the lookups. Rows come back as tuples, for the same reason.
    with conn.cursor() as cur:
        cur.execute(
            "WITH present AS (SELECT sha256, used FROM source_contents WHERE app = %(app)s"
            "  AND sha256 = ANY(string_to_array(%(shas)s, ','))),"
            " touched AS (UPDATE source_contents SET used = now() WHERE app = %(app)s AND sha256 = ANY(ARRAY("
            "  SELECT sha256 FROM present WHERE used < now() - %(lag)s * interval '1 second')))"
            " SELECT sha256 FROM present",
            {"app": app, "shas": ",".join(shas), "lag": lag},
        )
        return {sha for (sha,) in cur}


def add_contents(conn, *, app: str, pack: str, contents: list[tuple[str, int, int]]) -> None:
    """Record contents stored in a pack (sha256, size, offset), or mark them used if already recorded
    (where they were first stored)."""
    with conn.cursor() as cur:
        execute_values(
            cur,
            "INSERT INTO source_contents (app, sha256, size, pack, at) VALUES %s"
            " ON CONFLICT (app, sha256) DO UPDATE SET used = now()",
            [(app, sha, size, pack, at) for sha, size, at in contents],
        )


def locations(conn, *, app: str, shas: list[str]) -> dict[str, tuple[str, int, int]]:
    """Where each stored content's bytes are: its pack ('' when stored alone), offset and size."""
    rows = fetchall(
        conn,
        "SELECT sha256, pack, at, size FROM source_contents WHERE app = %s AND sha256 = ANY(%s)",
        (app, shas),
    )
    return {row["sha256"]: (row["pack"], row["at"], row["size"]) for row in rows}


def packs_in_use(conn, *, app: str, packs: list[str]) -> set[str]:
    rows = fetchall(
        conn,
        "SELECT DISTINCT pack FROM source_contents WHERE app = %s AND pack = ANY(%s)",
        (app, packs),
    )
    return {row["pack"] for row in rows}


def touch_tree(conn, *, app: str, digest: str, lag: int = 0) -> bool:
    """Mark a recorded tree as just used (unless marked within `lag` seconds); False when it is unknown."""
    row = fetchone(
        conn,
        "WITH touched AS (UPDATE source_trees SET used = now() WHERE app = %(app)s AND digest = %(digest)s"
        "  AND used < now() - %(lag)s * interval '1 second')"
        " SELECT 1 AS known FROM source_trees WHERE app = %(app)s AND digest = %(digest)s",
        {"app": app, "digest": digest, "lag": lag},
    )
    return row is not None


def put_tree(conn, *, app: str, digest: str, entries: list[dict], files: int, size: int) -> None:
    fetchone(
        conn,
        "INSERT INTO source_trees (app, digest, entries, files, bytes) VALUES (%s, %s, %s, %s, %s)"
        " ON CONFLICT (app, digest) DO UPDATE SET used = now() RETURNING digest",
        (app, digest, Json(entries), files, size),
    )


def get_tree(conn, *, app: str, digest: str) -> dict | None:
    return fetchone(conn, "SELECT * FROM source_trees WHERE app = %s AND digest = %s", (app, digest))


# Contents and trees a build may still need: those of trees used or built from within the retention, and
# of every build not yet ended, however old.
_LIVE_TREES = """
    SELECT t.app, t.digest, t.entries FROM source_trees t
    WHERE t.used >= %(cutoff)s OR EXISTS (
        SELECT 1 FROM builds b WHERE b.app = t.app
        AND b.source_url = 'manifest://' || t.app || '/' || t.digest
        AND (b.started >= %(cutoff)s OR b.status IN ('created', 'running')))
"""


def sweep_contents(conn, *, cutoff) -> list[dict]:
    """Delete the rows of contents unused since cutoff that no live tree names; return them."""
    return fetchall(
        conn,
        f"WITH live AS ({_LIVE_TREES}), needed AS ("
        "  SELECT DISTINCT live.app, e->>'sha256' AS sha256"
        "  FROM live CROSS JOIN LATERAL jsonb_array_elements(live.entries) e)"
        " DELETE FROM source_contents c WHERE c.used < %(cutoff)s AND NOT EXISTS ("
        "  SELECT 1 FROM needed WHERE needed.app = c.app AND needed.sha256 = c.sha256)"
        " RETURNING c.app, c.sha256, c.pack",
        {"cutoff": cutoff},
    )


def sweep_trees(conn, *, cutoff) -> int:
    rows = fetchall(
        conn,
        f"WITH live AS ({_LIVE_TREES}) DELETE FROM source_trees t WHERE NOT EXISTS ("
        " SELECT 1 FROM live WHERE live.app = t.app AND live.digest = t.digest) RETURNING t.digest",
        {"cutoff": cutoff},
    )
    return len(rows)

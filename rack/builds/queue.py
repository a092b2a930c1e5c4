"""The fair queue: which waiting build a free worker takes next, and where a waiting build stands.

Celery carries one task per waiting build, but a task does not name the build it runs: the worker that
takes it claims whichever waiting build is next in the fair order (below), and only one whose app runs
fewer than `RACK_APP_MAX_RUNNING` builds. So a burst of one app's builds ahead of another app's in
Celery's queue does not hold the other app back.

The fair order serves apps in turn: a waiting build's turn is its app's running builds plus its rank among
the app's waiting ones; ties go to the app served longest ago (or never), then to the older build. The order
is decided under an advisory lock, so two workers never both take an app's last free slot. A webhook's
builds still run one after another, in the order of their pushes.
"""

from __future__ import annotations

from rack.db import execute, fetchall
from rack.sql import builds as sql

DISPATCH_LOCK = 0x72616364  # any constant: workers choosing a build queue on it for a moment

_ORDER = """
WITH waiting AS (
    SELECT id, app, started, webhook, row_number() OVER (PARTITION BY app ORDER BY started, id) AS rank
      FROM builds
     WHERE status = 'created' AND repository = '' AND NOT cancel_requested
), running AS (
    SELECT app, count(*) AS n FROM builds WHERE status = 'running' GROUP BY app
)
SELECT w.id, w.app, w.started, w.rank, COALESCE(r.n, 0) AS running,
       -- a webhook's builds run in the order of their pushes: one after another
       (w.webhook <> '' AND EXISTS (
           SELECT 1 FROM builds e
            WHERE e.webhook = w.webhook AND e.status IN ('created', 'running')
              AND (e.started, e.id) < (w.started, w.id))) AS blocked
  FROM waiting w
  JOIN apps a ON a.name = w.app
  LEFT JOIN running r ON r.app = w.app
 ORDER BY COALESCE(r.n, 0) + w.rank, a.dispatched NULLS FIRST, w.started, w.id
"""


def order(conn) -> list[dict]:
    """Return the waiting builds in the order workers take them: `id`, `app`, `started`, `running`."""
    return fetchall(conn, _ORDER)


def position(conn, build_id: str) -> int:
    """Return where a waiting build stands in the fair order (1 = next), or 0 if it is not waiting."""
    for number, row in enumerate(order(conn), start=1):
        if row["id"] == build_id:
            return number
    return 0


def claim_next(conn, *, process: str, app_max_running: int) -> dict | None:
    """Claim the first waiting build whose app is under its running limit; None if there is none.

    The caller's transaction holds the dispatch lock until it commits, so the claim and the counts it
    was decided on are one step.
    """
    execute(conn, "SELECT pg_advisory_xact_lock(%s)", (DISPATCH_LOCK,))
    for row in order(conn):
        if row["running"] < app_max_running and not row["blocked"]:
            claimed = sql.mark_running(conn, id=row["id"], process=process)
            if claimed is not None:
                execute(conn, "UPDATE apps SET dispatched = clock_timestamp() WHERE name = %s", (row["app"],))
                return claimed
    return None


def waiting(conn) -> int:
    """Return how many builds wait for a worker."""
    return len(order(conn))

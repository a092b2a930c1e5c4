"""Apply the numbered SQL files in `migrations/` in order, each once, under an advisory lock."""

from __future__ import annotations

from pathlib import Path

from rack.db import Database, execute, fetchall

MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"
# Any constant works; two processes migrating at once queue on it instead of racing.
LOCK_ID = 0x7261636B


def pending(applied: set[str], folder: Path = MIGRATIONS) -> list[Path]:
    """List the migration files not yet applied, in order."""
    return [p for p in sorted(folder.glob("[0-9]*.sql")) if p.stem not in applied]


def migrate(db: Database, folder: Path = MIGRATIONS) -> list[str]:
    """Apply every pending migration in one transaction; return the versions applied."""
    with db.transaction() as conn:
        execute(conn, "SELECT pg_advisory_xact_lock(%s)", (LOCK_ID,))
        execute(
            conn,
            "CREATE TABLE IF NOT EXISTS schema_migrations"
            " (version text PRIMARY KEY, applied timestamptz NOT NULL DEFAULT now())",
        )
        applied = {r["version"] for r in fetchall(conn, "SELECT version FROM schema_migrations")}
        done = []
        for path in pending(applied, folder):
            execute(conn, path.read_text())
            execute(conn, "INSERT INTO schema_migrations (version) VALUES (%s)", (path.stem,))
            done.append(path.stem)
        return done

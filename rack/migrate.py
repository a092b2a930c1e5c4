"""Apply the numbered SQL files shipped in the package (`rack/migrations/`) in order, each once, under an
advisory lock. They are read with importlib.resources, so an installed wheel migrates as a checkout does."""

from __future__ import annotations

from importlib.resources import files
from importlib.resources.abc import Traversable

from rack.db import Database, execute, fetchall
from rack.errors import RackError

MIGRATIONS: Traversable = files("rack") / "migrations"
# Any constant works; two processes migrating at once queue on it instead of racing.
LOCK_ID = 0x7261636B


class NoMigrations(RackError):
    """The package holds no migrations: a broken install, never a database that is up to date."""


def found(folder: Traversable = MIGRATIONS) -> list[Traversable]:
    """Every migration file, in order; NoMigrations when there is none."""
    names = (
        [p for p in folder.iterdir() if p.name[:1].isdigit() and p.name.endswith(".sql")]
        if folder.is_dir()
        else []
    )
    if not names:
        raise NoMigrations(f"no migrations found in {folder}: the rack package is incomplete, reinstall it")
    return sorted(names, key=lambda p: p.name)


def pending(applied: set[str], folder: Traversable = MIGRATIONS) -> list[Traversable]:
    """List the migration files not yet applied, in order."""
    return [p for p in found(folder) if p.name.removesuffix(".sql") not in applied]


def migrate(db: Database, folder: Traversable = MIGRATIONS) -> list[str]:
    """Apply every pending migration in one transaction; return the versions applied."""
    todo = found(folder)  # before touching the database: an empty package must not look up to date
    with db.transaction() as conn:
        execute(conn, "SELECT pg_advisory_xact_lock(%s)", (LOCK_ID,))
        execute(
            conn,
            "CREATE TABLE IF NOT EXISTS schema_migrations"
            " (version text PRIMARY KEY, applied timestamptz NOT NULL DEFAULT now())",
        )
        applied = {r["version"] for r in fetchall(conn, "SELECT version FROM schema_migrations")}
        done = []
        for path in todo:
            version = path.name.removesuffix(".sql")
            if version in applied:
                continue
            execute(conn, path.read_text(encoding="utf-8"))
            execute(conn, "INSERT INTO schema_migrations (version) VALUES (%s)", (version,))
            done.append(version)
        return done

"""`rack migrate`: each numbered file applied once, in order, even when two processes start together."""

from __future__ import annotations

import secrets
import subprocess
import sys
from pathlib import Path

import psycopg2
import pytest

from rack.db import Database, fetchall
from rack.migrate import MIGRATIONS, migrate


@pytest.fixture
def fresh_db(stack):
    """An empty database of its own on the test Postgres."""
    name = f"mig_{secrets.token_hex(4)}"
    base = stack.env["RACK_DATABASE_URL"].rsplit("/", 1)[0]
    admin = psycopg2.connect(base.replace("//rack@", "//postgres@") + "/postgres")
    admin.autocommit = True
    admin.cursor().execute(f"CREATE DATABASE {name} OWNER rack")
    url = f"{base}/{name}"
    yield url
    admin.cursor().execute(f"DROP DATABASE {name} WITH (FORCE)")
    admin.close()


def versions(url: str) -> list[str]:
    db = Database(url)
    with db.transaction() as conn:
        rows = fetchall(conn, "SELECT version FROM schema_migrations ORDER BY version")
    db.close()
    return [r["version"] for r in rows]


def test_two_processes_migrating_at_once_apply_each_file_once(stack, fresh_db):
    env = {**stack.env, "RACK_DATABASE_URL": fresh_db, "PATH": "/usr/bin:/bin"}
    cmd = [sys.executable, "-m", "rack", "migrate"]
    procs = [
        subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(3)
    ]
    results = [(p.wait(60), *p.communicate()) for p in procs]
    assert [r[0] for r in results] == [0, 0, 0], results
    outputs = sorted(r[1].strip() for r in results)
    expected = sorted(p.stem for p in MIGRATIONS.glob("[0-9]*.sql"))
    # One process applied everything; the others, queued on the lock, found nothing left to do.
    assert outputs[-1] == f"applied {len(expected)} migration(s): {', '.join(expected)}"
    assert outputs[:-1] == ["applied 0 migration(s)"] * 2
    assert versions(fresh_db) == expected


def test_a_failing_migration_leaves_nothing_half_applied(fresh_db, tmp_path: Path):
    (tmp_path / "0001_ok.sql").write_text("CREATE TABLE one (id int);")
    (tmp_path / "0002_bad.sql").write_text("CREATE TABLE two (id int); SELECT * FROM no_such_table;")
    db = Database(fresh_db)
    with pytest.raises(psycopg2.errors.UndefinedTable):
        migrate(db, tmp_path)
    with db.transaction() as conn:
        tables = fetchall(conn, "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
    assert tables == []
    (tmp_path / "0002_bad.sql").write_text("CREATE TABLE two (id int);")
    assert migrate(db, tmp_path) == ["0001_ok", "0002_bad"]
    assert migrate(db, tmp_path) == []
    db.close()

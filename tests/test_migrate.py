"""`rack migrate`: each numbered file applied once, in order, even when two processes start together."""

from __future__ import annotations

import secrets
import shutil
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
    postgres = stack.services["postgres"]
    postgres.admin(f"CREATE DATABASE {name} OWNER rack")
    yield f"{base}/{name}"
    postgres.admin(f"DROP DATABASE {name} WITH (FORCE)")


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
    expected = sorted(p.name.removesuffix(".sql") for p in MIGRATIONS.iterdir() if p.name.endswith(".sql"))
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


def test_no_migrations_found_is_an_error_not_up_to_date(fresh_db, tmp_path: Path):
    from rack.migrate import NoMigrations

    db = Database(fresh_db)
    try:
        with pytest.raises(NoMigrations, match="no migrations found"):
            migrate(db, tmp_path)
    finally:
        db.close()


def test_migrations_live_in_the_package_only():
    root = Path(__file__).resolve().parents[1]
    stray = [p.relative_to(root).as_posix() for p in root.glob("*/*.sql") if p.parent.name != "rack"]
    assert stray == [] and not (root / "migrations").exists()  # a file there would never be applied


def test_a_wheel_in_a_fresh_venv_migrates_an_empty_database(stack, fresh_db, tmp_path: Path):
    root = Path(__file__).resolve().parents[1]
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    source, wheels = tmp_path / "source", tmp_path / "wheels"  # built from a copy: the checkout stays clean
    for name in ("rack", "rack_api", "rack_worker", "cli"):
        shutil.copytree(root / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(root / "pyproject.toml", source)
    build = [*pip, "wheel", "--no-deps", "-w", wheels, source]
    subprocess.run(build, check=True, timeout=300, capture_output=True)
    (wheel,) = wheels.glob("rack-*.whl")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", venv], check=True, timeout=120)
    # The wheel, and only what `rack migrate` imports: no checkout on the path, no editable install.
    needs = ["click==8.2.1", "psycopg2-binary==2.9.10"]
    install = [
        venv / "bin" / "python",
        "-m",
        "pip",
        "--disable-pip-version-check",
        "-q",
        "install",
        "--no-deps",
    ]
    subprocess.run([*install, wheel, *needs], check=True, timeout=300, capture_output=True)
    env = {"PATH": "/usr/bin:/bin", "RACK_DATABASE_URL": fresh_db, "RACK_PASSWORD": "x"}
    proc = subprocess.run(
        [venv / "bin" / "rack", "migrate"], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    shipped = sorted(p.name.removesuffix(".sql") for p in MIGRATIONS.iterdir() if p.name.endswith(".sql"))
    assert proc.stdout == f"applied {len(shipped)} migration(s): {', '.join(shipped)}\n"
    assert versions(fresh_db) == shipped
    again = subprocess.run(
        [venv / "bin" / "rack", "migrate"], env=env, cwd=tmp_path, capture_output=True, text=True
    )
    assert again.stdout == "applied 0 migration(s)\n"
    version = subprocess.run(
        [venv / "bin" / "python", "-c", "import importlib.metadata as m, rack; print(m.version('rack'), rack.__version__)"],  # noqa: E501
        capture_output=True, text=True, check=True, cwd=tmp_path,
    )  # fmt: skip
    assert len(set(version.stdout.split())) == 1  # one version string

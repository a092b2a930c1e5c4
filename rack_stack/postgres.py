"""Postgres from Debian's binaries, run as the `postgres` user on loopback, with role and database `rack`."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

from rack_stack import procs
from rack_stack.service import Service

USER = "postgres"
DATABASE = "rack"
# What a new postmaster logs while the previous one (killed) or its children are still going away.
LINGERING = ('lock file "postmaster.pid" already exists', "pre-existing shared memory block")
FAST_SETTINGS = {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}


def bin_dir() -> Path:
    """Return the bin folder of the newest PostgreSQL that Debian installed."""
    found = [p for p in Path("/usr/lib/postgresql").glob("*/bin") if (p / "postgres").exists()]
    if not found:
        raise procs.StartError("PostgreSQL is not installed: run deploy/local/install")
    return max(found, key=lambda p: float(p.parent.name))


def _run_as_postgres(argv: list, *, cwd: Path) -> subprocess.CompletedProcess:
    """Run a command as the postgres user (Postgres refuses root), or as ourselves if we aren't root."""
    user = USER if os.geteuid() == 0 else None
    return subprocess.run(
        argv,
        user=user,
        group=user,
        extra_groups=[] if user else None,
        cwd=cwd,
        env=procs.base_env(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
    )


def _chown(path: Path) -> None:
    if os.geteuid() == 0:
        shutil.chown(path, USER, USER)


class Postgres(Service):
    """A private Postgres cluster in `<home>/postgres`."""

    name = "postgres"
    proc_name = "postgres"
    stop_signal = signal.SIGINT  # fast shutdown: SIGTERM would wait for every client to leave

    @property
    def port(self) -> int:
        return self.stack.ports["postgres"]

    @property
    def data(self) -> Path:
        return self.home / "postgres"

    @property
    def sockets(self) -> Path:
        return self.stack.run_dir / "postgres-sockets"

    @property
    def pidfile(self) -> Path:
        return self.data / "postmaster.pid"

    @property
    def address(self) -> str:
        return f"postgresql://{DATABASE}@127.0.0.1:{self.port}/{DATABASE}"

    def ready(self) -> bool:
        """Tell whether the `rack` database accepts the `rack` role."""
        return self._query("SELECT 1", user=DATABASE, dbname=DATABASE) is not None

    def launch(self) -> int:
        """Create the cluster if needed, start it with pg_ctl and create the rack role and database."""
        bindir = bin_dir()
        if not (self.data / "PG_VERSION").exists():
            self._initdb(bindir)
        self._configure()
        self.log.touch()
        _chown(self.log)
        self._pg_ctl_start(bindir)
        self._create_database()
        pid = procs.read_pid(self.pidfile)
        if pid is None:
            raise procs.StartError(f"postgres started but wrote no pid to {self.pidfile}")
        return pid

    def _pg_ctl_start(self, bindir: Path) -> None:
        """Run `pg_ctl start -w`, retrying while a crashed postmaster's pid or shared memory lingers."""
        argv = [bindir / "pg_ctl", "start", "-w", "-t", str(int(self.start_timeout)), "-D", self.data]
        deadline = time.monotonic() + 10
        while True:
            offset = self.log.stat().st_size
            result = _run_as_postgres([*argv, "-l", self.log], cwd=self.data)
            if result.returncode == 0:
                return
            with self.log.open("rb") as f:
                f.seek(offset)
                new = f.read().decode(errors="replace")
            if not any(line in new for line in LINGERING) or time.monotonic() > deadline:
                output = result.stdout + result.stderr
                raise procs.StartError(f"pg_ctl start failed: {output}\n{procs.log_tail(self.log)}")
            time.sleep(0.2)

    def cleanup(self) -> None:
        """Leave postmaster.pid alone: Postgres removes it itself and checks a stale one safely."""

    def _initdb(self, bindir: Path) -> None:
        if self.data.exists():
            shutil.rmtree(self.data)  # an initdb that was interrupted
        self.data.mkdir(mode=0o700)
        _chown(self.data)
        argv = [bindir / "initdb", "-D", self.data, "--username", USER, "--auth", "trust"]
        argv += ["--encoding", "UTF8", "--no-locale", *(["--no-sync"] if self.stack.fast else [])]
        result = _run_as_postgres(argv, cwd=self.data)
        if result.returncode != 0:
            raise procs.StartError(f"initdb failed:\n{result.stdout}{result.stderr}")

    def _configure(self) -> None:
        self.sockets.mkdir(parents=True, exist_ok=True)
        _chown(self.sockets)
        settings = {
            "listen_addresses": "'127.0.0.1'",
            "port": str(self.port),
            "unix_socket_directories": f"'{self.sockets}'",
            **(FAST_SETTINGS if self.stack.fast else {}),
        }
        conf = self.data / "rack.conf"
        conf.write_text(
            "# Written by rack_stack on every start.\n" + "".join(f"{k} = {v}\n" for k, v in settings.items())
        )
        _chown(conf)
        main = self.data / "postgresql.conf"
        include = "include_if_exists = 'rack.conf'\n"
        if include not in main.read_text():
            with main.open("a") as f:
                f.write("\n" + include)

    def _create_database(self) -> None:
        if not self._query("SELECT 1 FROM pg_roles WHERE rolname = %s", DATABASE):
            self._query(f"CREATE ROLE {DATABASE} LOGIN")
        if not self._query("SELECT 1 FROM pg_database WHERE datname = %s", DATABASE):
            self._query(f"CREATE DATABASE {DATABASE} OWNER {DATABASE}")

    def _query(self, sql: str, *args: str, user: str = USER, dbname: str = "postgres") -> tuple | None:
        """Run one statement in autocommit; return its first row, or None if Postgres can't be reached."""
        import psycopg2

        try:
            conn = psycopg2.connect(
                host="127.0.0.1", port=self.port, user=user, dbname=dbname, connect_timeout=2
            )
        except psycopg2.OperationalError:
            return None
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute(sql, args or None)
                return cur.fetchone() if cur.description else ()
        finally:
            conn.close()

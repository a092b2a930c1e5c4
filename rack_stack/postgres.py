"""Postgres from Debian's binaries, run as the `postgres` user on loopback, with role and database `rack`."""

from __future__ import annotations

import os
import shutil
import signal
import stat
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


def _user() -> str | None:
    """Return the user to run Postgres as: it refuses root; anyone else runs it as themselves."""
    return USER if os.geteuid() == 0 else None


def _run_as_postgres(argv: list, *, cwd: Path) -> subprocess.CompletedProcess:
    """Run a command as the user Postgres runs as."""
    user = _user()
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


def _let_others_traverse(path: Path) -> bool:
    """Add o+x to `path` and its parents so the postgres user reaches its data; tell if any lacked it."""
    if os.geteuid() != 0:
        return False
    changed = False
    for folder in (path, *path.parents):
        mode = folder.stat().st_mode
        if not mode & stat.S_IXOTH:
            folder.chmod(stat.S_IMODE(mode) | stat.S_IXOTH)
            changed = True
    return changed


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

    def launch(self) -> int:
        """Create the cluster if needed, start the postmaster and create the rack role and database."""
        attempts = 3
        while True:
            _let_others_traverse(self.home)
            try:
                return self._launch(bin_dir())
            except procs.StartError:
                # pytest makes its base temp folder 0700 again whenever a session begins, which locks
                # the postgres user out of a stack home below it, even halfway through a start.
                attempts -= 1
                if not attempts or not _let_others_traverse(self.home):
                    raise
                procs.kill(procs.read_pid(self.pidfile), sig=self.stop_signal, name=self.proc_name)

    def ready(self) -> bool:
        """Tell whether the `rack` database accepts the `rack` role."""
        import psycopg2

        try:
            self._connect(user=DATABASE, dbname=DATABASE).close()
        except psycopg2.OperationalError:
            return False
        return True

    def cleanup(self) -> None:
        """Leave postmaster.pid alone: Postgres removes it itself and checks a stale one safely."""

    def _launch(self, bindir: Path) -> int:
        if not (self.data / "PG_VERSION").exists():
            self._initdb(bindir)
        self._configure()
        pid = self._run_postmaster(bindir)
        self._create_database()
        return pid

    def _initdb(self, bindir: Path) -> None:
        """Create the cluster in a side folder and move it in place, so a cluster is never half made."""
        staging = self.home / "postgres.initdb"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(mode=0o700)
        _chown(staging)
        argv = [bindir / "initdb", "-D", staging, "--username", USER, "--auth", "trust"]
        argv += ["--encoding", "UTF8", "--no-locale", *(["--no-sync"] if self.stack.fast else [])]
        result = _run_as_postgres(argv, cwd=staging)
        if result.returncode != 0:
            raise procs.StartError(f"initdb failed:\n{result.stdout}{result.stderr}")
        if self.data.exists():
            shutil.rmtree(self.data)  # no PG_VERSION: not a cluster
        staging.rename(self.data)

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
        lines = "".join(f"{key} = {value}\n" for key, value in settings.items())
        conf.write_text("# Written by rack_stack on every start.\n" + lines)
        _chown(conf)
        main = self.data / "postgresql.conf"
        include = "include_if_exists = 'rack.conf'\n"
        if include not in main.read_text():
            with main.open("a") as f:
                f.write("\n" + include)

    def _run_postmaster(self, bindir: Path) -> int:
        """Start the postmaster, retrying while a crashed one's pid or shared memory lingers; return its pid.

        Not `pg_ctl -w`: it polls postmaster.pid as the postgres user, and waits blind for its whole
        timeout if the path stops being traversable meanwhile. We wait as ourselves, on the exact pid.
        """
        deadline = time.monotonic() + 10
        while True:
            offset = self.log.stat().st_size if self.log.exists() else 0
            pid = procs.spawn(
                [bindir / "postgres", "-D", self.data], log=self.log, cwd=self.data, user=_user()
            )
            procs.wait_for(lambda p=pid: self._accepts() or not procs.alive(p), timeout=self.start_timeout)
            if procs.alive(pid) and self._accepts():
                return pid
            procs.kill(pid, sig=self.stop_signal, timeout=5)
            with self.log.open("rb") as f:
                f.seek(offset)
                new = f.read().decode(errors="replace")
            if not any(line in new for line in LINGERING) or time.monotonic() > deadline:
                raise procs.StartError(f"postgres did not start; see {self.log}:\n{procs.log_tail(self.log)}")
            time.sleep(0.2)

    def _accepts(self) -> bool:
        import psycopg2

        try:
            self._connect().close()
        except psycopg2.OperationalError:
            return False
        return True

    def _create_database(self) -> None:
        import psycopg2

        try:
            conn = self._connect()
        except psycopg2.OperationalError as exc:
            raise procs.StartError(f"postgres started but refuses connections: {exc}") from exc
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (DATABASE,))
                if cur.fetchone() is None:
                    cur.execute(f"CREATE ROLE {DATABASE} LOGIN")
                cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE,))
                if cur.fetchone() is None:
                    cur.execute(f"CREATE DATABASE {DATABASE} OWNER {DATABASE}")
        finally:
            conn.close()

    def _connect(self, *, user: str = USER, dbname: str = "postgres"):
        import psycopg2

        return psycopg2.connect(host="127.0.0.1", port=self.port, user=user, dbname=dbname, connect_timeout=2)

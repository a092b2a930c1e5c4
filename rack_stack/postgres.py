"""Postgres from Debian's binaries, run as the `postgres` user on loopback, with role and database `rack`.

Nobody is trusted: the `rack` role logs in over TCP with its password (scram-sha-256); the superuser
only through the unix socket, as the operating-system user Postgres runs as (peer), never over TCP.
"""

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


def _run_as_postgres(argv: list, *, cwd: Path, stdin: str | None = None) -> subprocess.CompletedProcess:
    """Run a command as the user Postgres runs as, with `stdin` as its input (secrets go there, not argv)."""
    user = _user()
    return subprocess.run(
        argv,
        user=user,
        group=user,
        extra_groups=[] if user else None,
        cwd=cwd,
        env=procs.base_env(),
        input=stdin,
        stdin=subprocess.DEVNULL if stdin is None else None,
        capture_output=True,
        text=True,
    )


def _os_user() -> str:
    """Return the name of the operating-system user Postgres runs as."""
    import pwd

    return _user() or pwd.getpwuid(os.geteuid()).pw_name


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
        """Tell whether the `rack` database accepts the `rack` role with its password."""
        import psycopg2

        try:
            psycopg2.connect(self.stack.env["RACK_DATABASE_URL"], connect_timeout=2).close()
        except psycopg2.OperationalError:
            return False
        return True

    def admin(self, sql: str) -> str:
        """Run SQL as the superuser through the unix socket (peer auth) and return psql's output."""
        argv = [bin_dir() / "psql", "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1"]
        argv += ["-h", self.sockets, "-p", str(self.port), "-U", USER, "-d", "postgres"]
        result = _run_as_postgres(argv, cwd=self.sockets, stdin=sql)
        if result.returncode != 0:
            raise procs.StartError(f"psql as {USER} failed: {result.stderr.strip()}")
        return result.stdout

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
        argv = [bindir / "initdb", "-D", staging, "--username", USER]
        argv += ["--auth-local", "peer", "--auth-host", "scram-sha-256"]  # replaced by rack_hba.conf
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
        hba, ident = self.data / "rack_hba.conf", self.data / "rack_ident.conf"
        hba.write_text(
            "# Written by rack_stack on every start. No trust; the superuser only on the unix socket.\n"
            f"local all {USER} peer map=stack\n"
            f"host all {DATABASE} 127.0.0.1/32 scram-sha-256\n"
        )
        ident.write_text(f"# Written by rack_stack on every start.\nstack {_os_user()} {USER}\n")
        settings = {
            "listen_addresses": "'127.0.0.1'",
            "port": str(self.port),
            "unix_socket_directories": f"'{self.sockets}'",
            "hba_file": f"'{hba}'",
            "ident_file": f"'{ident}'",
            "password_encryption": "'scram-sha-256'",
            **(FAST_SETTINGS if self.stack.fast else {}),
        }
        for path in (hba, ident):
            _chown(path)
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
        """Tell whether the postmaster accepts connections (pg_isready: no login needed)."""
        argv = [bin_dir() / "pg_isready", "-q", "-h", "127.0.0.1", "-p", str(self.port), "-t", "2"]
        return subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True).returncode == 0

    def _create_database(self) -> None:
        """Create the `rack` role and database if missing, and (re)set the role's password."""
        password = self.stack.secrets["postgres"]
        if "'" in password:
            raise procs.StartError("the postgres password must not contain a quote")
        sql = (
            f"SELECT 'CREATE ROLE {DATABASE}' WHERE NOT EXISTS "
            f"(SELECT 1 FROM pg_roles WHERE rolname = '{DATABASE}') \\gexec\n"
            f"ALTER ROLE {DATABASE} WITH LOGIN NOSUPERUSER PASSWORD '{password}';\n"
            f"SELECT 'CREATE DATABASE {DATABASE} OWNER {DATABASE}' WHERE NOT EXISTS "
            f"(SELECT 1 FROM pg_database WHERE datname = '{DATABASE}') \\gexec\n"
        )
        try:
            self.admin(sql)
        except procs.StartError as exc:
            raise procs.StartError(f"postgres started but the rack role could not be set up: {exc}") from exc

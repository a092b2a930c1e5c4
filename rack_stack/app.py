"""The rack's own processes: migrations, the API under gunicorn, one Celery worker."""

from __future__ import annotations

import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

from rack_stack import procs
from rack_stack.service import Service

CHECKOUT = Path(__file__).resolve().parents[1]
WSGI_APP = "rack_api.wsgi:app"
CELERY_APP = "rack_worker.worker"  # holds the app; rack_worker.celery_app only has make_celery()


def venv_bin() -> Path:
    """Return the bin folder of the virtualenv this runs in, else the checkout's `.venv`."""
    if sys.prefix != sys.base_prefix:
        return Path(sys.prefix) / "bin"
    return CHECKOUT / ".venv" / "bin"


class _AppService(Service):
    """A process of the rack itself, run with the stack's environment."""

    def _env(self) -> dict[str, str]:
        return {**self.stack.env, "PYTHONUNBUFFERED": "1"}


class Api(_AppService):
    """gunicorn serving `rack_api.wsgi:app` on the api port, after `rack migrate` succeeded."""

    name = "api"
    proc_name = "gunicorn"
    stop_signal = signal.SIGINT  # quick shutdown: TERM would wait for open log followers

    @property
    def port(self) -> int:
        return self.stack.ports["api"]

    @property
    def address(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def ready(self) -> bool:
        """Tell whether the API answers HTTP at all (GET /check)."""
        try:
            with urllib.request.urlopen(f"{self.address}/check", timeout=2):
                return True
        except urllib.error.HTTPError:
            return True
        except (urllib.error.URLError, OSError):
            return False

    def launch(self) -> int:
        """Apply the migrations, then start gunicorn."""
        self.migrate()
        argv = [
            venv_bin() / "gunicorn",
            "--config", "python:rack_api.server",  # gevent workers: see rack_api/server.py
            "--bind", f"127.0.0.1:{self.port}",
            WSGI_APP,
        ]  # fmt: skip
        return procs.spawn(argv, log=self.log, pidfile=self.pidfile, env=self._env(), cwd=CHECKOUT)

    def migrate(self) -> None:
        """Run `rack migrate` against the stack's database; raise StartError if it fails."""
        log = self.home / "migrate.log"
        with open(log, "ab") as out:
            result = subprocess.run(
                [venv_bin() / "rack", "migrate"],
                env=procs.base_env(self._env()), cwd=CHECKOUT,
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip
        if result.returncode != 0:
            raise procs.StartError(f"rack migrate failed (exit {result.returncode}):\n{procs.log_tail(log)}")


class Worker(_AppService):
    """One Celery worker of the rack, one build at a time."""

    name = "worker"
    proc_name = "celery"
    stop_timeout = 30.0  # TERM: warm shutdown waits for the running build; once KILLed, acks_late requeues it

    @property
    def address(self) -> str:
        return self.stack.services["redis"].address  # without the password: `up` and `status` print it

    def ready(self) -> bool:
        """Tell whether the worker process lives (it answers through the broker, not directly)."""
        return self.pid() is not None

    def launch(self) -> int:
        """Start the worker and remember where its log starts, to see it report ready."""
        self._log_start = self.log.stat().st_size if self.log.exists() else 0
        argv = [
            venv_bin() / "celery", "-A", CELERY_APP, "worker",
            "--loglevel", "INFO", "--concurrency", "1", "--hostname", "worker1@%h",
        ]  # fmt: skip
        return procs.spawn(argv, log=self.log, pidfile=self.pidfile, env=self._env(), cwd=CHECKOUT)

    def wait_ready(self, pid: int) -> bool:
        """Wait until the new worker logs that it is ready; False if it died first."""

        def logged_ready() -> bool:
            with open(self.log, "rb") as f:
                f.seek(self._log_start)
                return b" ready." in f.read()

        procs.wait_for(lambda: logged_ready() or not procs.alive(pid), timeout=self.start_timeout)
        return procs.alive(pid) and logged_ready()

"""The life cycle every service of the stack shares: start once, probe, stop by pid."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from rack_stack import procs

if TYPE_CHECKING:
    from rack_stack.stack import Stack


class Service:
    """One process of the stack, tracked by a pidfile under the stack's home."""

    name: ClassVar[str]
    proc_name: ClassVar[str]  # a word of its command line, so a recycled pid is not taken for it
    stop_signal: ClassVar[int] = signal.SIGTERM
    start_timeout: ClassVar[float] = 60.0
    stop_timeout: ClassVar[float] = 20.0

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.home = stack.home

    @property
    def pidfile(self) -> Path:
        return self.home / f"{self.name}.pid"

    @property
    def log(self) -> Path:
        return self.home / f"{self.name}.log"

    @property
    def port(self) -> int | None:
        """Return the loopback TCP port it listens on, if any."""
        return None

    @property
    def address(self) -> str:
        """Return where clients reach it, for `status`."""
        return ""

    def port_taken(self) -> str | None:
        """Say so if the service is down and another process holds its port."""
        if self.port is None or self.pid() is not None:
            return None
        procs.wait_exited(procs.read_pid(self.pidfile))  # a crashed process may still hold it
        if procs.port_free(self.port):
            return None
        return f"{self.name}: port {self.port} on 127.0.0.1 is taken by another process"

    def pid(self) -> int | None:
        """Return the recorded pid if that process is alive, else None."""
        pid = procs.read_pid(self.pidfile)
        return pid if procs.alive(pid, self.proc_name) else None

    def ready(self) -> bool:
        """Tell whether the service answers its clients."""
        raise NotImplementedError

    def launch(self) -> int:
        """Prepare the service's files, start its process detached and return the pid."""
        raise NotImplementedError

    def wait_ready(self, pid: int) -> bool:
        """Wait until the freshly launched `pid` answers; False if it died or took too long."""
        procs.wait_for(lambda: self.ready() or not procs.alive(pid), timeout=self.start_timeout)
        return procs.alive(pid) and self.ready()

    def start(self) -> bool:
        """Start the service unless it already runs and answers; tell whether it was started."""
        if self.pid() is not None:
            if procs.wait_for(self.ready, timeout=self.start_timeout):
                return False
            raise procs.StartError(
                f"{self.name} runs (pid {self.pid()}) but does not answer; see {self.log}:\n"
                + procs.log_tail(self.log)
            )
        self._forget_crashed()
        pid = self.launch()
        if not self.wait_ready(pid):
            procs.kill(pid, sig=self.stop_signal, timeout=5)
            raise procs.StartError(
                f"{self.name} did not come up; see {self.log}:\n" + procs.log_tail(self.log)
            )
        return True

    def _forget_crashed(self) -> None:
        """Let a crashed process finish exiting, then clean up after it."""
        procs.wait_exited(
            procs.read_pid(self.pidfile)
        )  # Postgres takes an unreaped postmaster for a live one
        self.cleanup()

    def stop(self) -> bool:
        """Stop the service's process and wait for it to exit; tell whether it was running."""
        pid = self.pid()
        stopped = procs.kill(pid, sig=self.stop_signal, timeout=self.stop_timeout, name=self.proc_name)
        self.cleanup()
        return stopped

    def cleanup(self) -> None:
        """Remove what a stopped or crashed process left behind: its pidfile, at least."""
        self.pidfile.unlink(missing_ok=True)

"""Watch a running build: heartbeat its row, and stop it when cancelled, taken over or out of time."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from rack import logconfig
from rack.context import Rack
from rack.errors import BuildError, BuildPlatformError, BuildUserError
from rack.reasons import Reason
from rack.sql import builds as sql

log = logging.getLogger(__name__)
CANCEL_POLL = 1.0


class Watch:
    """A thread that heartbeats one build and records why it must stop; `check()` raises that reason."""

    def __init__(self, rack: Rack, *, build_id: str, process: str, timeout: float) -> None:
        self.rack = rack
        self.build_id = build_id
        self.process = process
        self.timeout = timeout
        self.interval = max(0.05, float(rack.settings.heartbeat_interval))
        # Between heartbeats, look at the row this often, so a cancel stops the build within a second or so.
        self.poll = min(self.interval, CANCEL_POLL)
        self.stopped: BuildError | None = None
        self._interrupts: list[Callable[[], None]] = []
        self._done = threading.Event()
        self._deadline = time.monotonic() + timeout
        self._thread = threading.Thread(
            target=logconfig.in_context(self._run), name=f"heartbeat {build_id}", daemon=True
        )

    def __enter__(self) -> Watch:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._done.set()
        self._thread.join()

    def on_stop(self, interrupt: Callable[[], None]) -> None:
        """Call `interrupt` (from the watch thread) when the build must stop, e.g. to kill its container."""
        self._interrupts.append(interrupt)
        if self.stopped is not None:
            interrupt()

    def check(self) -> None:
        """Raise the reason the build must stop, if there is one."""
        if self.stopped is not None:
            raise self.stopped

    def remaining(self) -> float:
        """Return the seconds left before the build times out."""
        return max(0.0, self._deadline - time.monotonic())

    def stop(self, reason: BuildError) -> None:
        """Record why the build must stop (the first reason wins) and interrupt what it is doing."""
        if self.stopped is None:
            self.stopped = reason
        for interrupt in list(self._interrupts):
            try:
                interrupt()
            except Exception:
                log.exception("interrupting build %s failed", self.build_id)

    def _run(self) -> None:
        # Past the deadline the build is told to stop but keeps its heartbeat until the watch is closed:
        # a step slow to die, or the final record, must not look like a lost worker to the reaper.
        next_beat = time.monotonic() + self.interval
        timed_out = False
        while not self._done.wait(self.poll if timed_out else min(self.poll, self.remaining())):
            if not timed_out and self.remaining() <= 0:
                timed_out = True
                self.stop(
                    BuildUserError(
                        Reason.TIMEOUT, f"the build ran longer than its limit of {self.timeout:g}s"
                    )
                )
            if time.monotonic() >= next_beat:
                next_beat = time.monotonic() + self.interval
                self.beat()
            else:
                self.look()

    def beat(self) -> None:
        """Heartbeat the row once; stop the build if it was cancelled or is no longer ours."""
        self._act_on(sql.heartbeat, "heartbeat")

    def look(self) -> None:
        """Read the row without touching it; stop the build if it was cancelled or is no longer ours."""
        self._act_on(sql.still_running, "check")

    def _act_on(self, query, what: str) -> None:
        try:
            with self.rack.db.transaction() as conn:
                row = query(conn, id=self.build_id, process=self.process)
        except Exception as exc:  # Postgres away for a moment: keep building, the next round retries
            log.warning("%s of build %s failed: %s", what, self.build_id, exc)
            return
        if row is None:
            self.stop(BuildPlatformError(Reason.LOST, "the build was ended by someone else while it ran"))
        elif row.get("cancel_requested"):
            self.stop(BuildUserError(Reason.CANCELLED, "the build was cancelled"))

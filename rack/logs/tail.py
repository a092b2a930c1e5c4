"""One reader of a running build's stream per process, shared by every follower of that build here.

Hundreds of followers of one build would otherwise each ask Redis for the same entries (and Postgres for
the build's status) and parse them: the cost of following would grow with followers times lines. A `Tail`
reads the stream once, keeps what each read brought as one `Piece` (a build's log is capped, so they are
bounded), looks at the build row every `poll_s` for an end that left no end entry (a worker died), and
wakes its followers when anything changes. Every follower that reads a piece whole gets the same object,
so what a route makes of it to send (a websocket frame) is made once for all of them (`Piece.memo`).
Threading primitives only: under gevent (the API) they are greenlets.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator

from rack.logs.stream import BuildLog, Entry

BATCH = 256
# Followers wake at most every COALESCE_S, plus COALESCE_PER_FOLLOWER_S for each follower (at most
# COALESCE_MAX_S): a wake costs the process work for every follower, so with many the wakes grow fewer
# and larger, and the process's share of time spent fanning lines out stays bounded; requests get theirs.
COALESCE_S = 0.02
COALESCE_PER_FOLLOWER_S = 0.0002
COALESCE_MAX_S = 0.25


def coalesce_s(followers: int) -> float:
    """Seconds to let lines gather before the next wake of `followers` followers."""
    return min(COALESCE_MAX_S, COALESCE_S + COALESCE_PER_FOLLOWER_S * followers)


class Piece(bytes):
    """The log bytes of one read of the stream (up to BATCH entries), shared by every follower of the build.

    `ended`: the read reached the end entry. `memo` holds what followers make of these bytes to send them
    (keyed by their maker), so hundreds of followers encode a piece once.
    """

    ended: bool
    memo: dict

    @classmethod
    def of(cls, entries: list[Entry]) -> Piece:
        piece = cls(b"".join(entry.data for entry in entries))
        piece.ended = bool(entries) and entries[-1].end_status is not None
        piece.memo = {}
        return piece


class Tail:
    """The entries of one build's stream, read once for many followers; `final` once the build ended."""

    def __init__(
        self, log: BuildLog, *, block_ms: int, poll: Callable[[], dict | None], poll_s: float
    ) -> None:
        self.log, self.block_ms, self.poll, self.poll_s = log, block_ms, poll, poll_s
        self.pieces: list[Piece] = []
        self.ended = False  # the end entry was read
        self.final: dict | None = None  # the build row, once it is final with no end entry read
        self.error: Exception | None = None
        self.users = 0
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._run, name=f"tail {log.build_id}", daemon=True)

    def _run(self) -> None:
        after, polled = "0-0", time.monotonic()
        try:
            while not self.ended and self.final is None:
                with self._cond:
                    if not self.users:
                        return
                new = self.log.read(after=after, block_ms=self.block_ms, count=BATCH)
                final = None
                if not new and time.monotonic() - polled >= self.poll_s:
                    polled = time.monotonic()
                    final = self.poll()
                with self._cond:
                    if new:
                        self.pieces.append(Piece.of(new))
                        after = new[-1].id
                        self.ended = self.pieces[-1].ended
                    self.final = final
                    self._cond.notify_all()
                if new and not self.ended:
                    time.sleep(coalesce_s(self.users))  # let lines gather: fewer, larger wakes
        except Exception as exc:  # Redis or Postgres away, the app deleted: every follower is told
            with self._cond:
                self.error = exc
                self._cond.notify_all()
            _forget(self)

    def wait(self, index: int, timeout: float) -> tuple[list[Piece], dict | None]:
        """Return the pieces from `index` on (waiting up to `timeout` s for one) and the final row if any."""
        with self._cond:
            self._cond.wait_for(
                lambda: len(self.pieces) > index or self.ended or self.final or self.error, timeout
            )
            pieces = self.pieces[index:]
            if not pieces and self.error is not None:
                raise self.error
            return pieces, (self.final if not pieces else None)


_tails: dict[str, Tail] = {}
_lock = threading.Lock()


def _forget(tail: Tail) -> None:
    with _lock:
        if _tails.get(tail.log.key) is tail:
            del _tails[tail.log.key]


@contextlib.contextmanager
def follow(log: BuildLog, *, block_ms: int, poll: Callable[[], dict | None], poll_s: float) -> Iterator[Tail]:
    """Share this process's tail of the build's stream (started if there is none) while in the block."""
    with _lock:
        tail = _tails.get(log.key)
        if tail is None:
            tail = _tails[log.key] = Tail(log, block_ms=block_ms, poll=poll, poll_s=poll_s)
            tail.users += 1
            tail._thread.start()
        else:
            tail.users += 1
    try:
        yield tail
    finally:
        with _lock:
            tail.users -= 1
            if not tail.users and _tails.get(log.key) is tail:
                del _tails[log.key]  # its reader stops after its current wait

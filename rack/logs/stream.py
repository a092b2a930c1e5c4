"""A build's log as a Redis Stream: append lines as they come, follow from any offset, end with a status.

The stream `rack:build:<ID>:log` holds entries with fields `t` (ms since the epoch) and `d` (the masked
bytes written in that ms: a line, a partial line, or all lines of that ms up to 16 KiB, so a fast build is
cheap to follow), then at most one entry with `end` (the final status) and `t`. The `d` fields joined are
the log byte for byte; an entry id is a follower's offset.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, BinaryIO, NamedTuple, cast

import redis

from rack import logconfig
from rack.errors import Invalid, Unavailable
from rack.logs.masking import Masker

log = logging.getLogger(__name__)

LIVE_TTL = 7 * 24 * 3600
BATCH_LINES = 1000
MAX_ENTRY = 16 * 1024
FULL_WAIT = 2.0  # seconds a write waits for a flusher that is behind before refusing
_OFFSET = re.compile(r"\d+(-\d+)?")
Stop = Callable[[], bool]

# ARGV: live ttl, batch tag, then time and data of each entry. Refuses lines after the end entry (-1);
# skips a batch whose tag is already on the last entry (0), which makes a retried batch harmless.
# A stream that has no expiry yet gets the live ttl, so a key abandoned mid-build cannot live forever.
_APPEND = """
local key = KEYS[1]
local last = redis.call('XREVRANGE', key, '+', '-', 'COUNT', 1)[1]
if last and last[2][1] == 'end' then return -1 end
if last and last[2][5] == 'b' and last[2][6] == ARGV[2] then return 0 end
local n = #ARGV
for i = 3, n - 2, 2 do
  redis.call('XADD', key, '*', 't', ARGV[i], 'd', ARGV[i + 1])
end
redis.call('XADD', key, '*', 't', ARGV[n - 1], 'd', ARGV[n], 'b', ARGV[2])
if redis.call('TTL', key) < 0 then redis.call('EXPIRE', key, ARGV[1]) end
return (n - 2) / 2
"""

# ARGV: status, ttl, time. Adds the end entry unless the last entry already is one.
_END = """
local last = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)[1]
if last and last[2][1] == 'end' then return 0 end
redis.call('XADD', KEYS[1], '*', 'end', ARGV[1], 't', ARGV[3])
redis.call('EXPIRE', KEYS[1], ARGV[2])
return 1
"""


class Entry(NamedTuple):
    """One entry of a build's log: a line's bytes, or the end with the build's final status."""

    id: str
    data: bytes
    time_ms: int
    end_status: str | None = None


@contextlib.contextmanager
def _guard() -> Iterator[None]:
    try:
        yield
    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
        raise Unavailable(f"the log store (Redis) is unreachable: {exc}") from exc


def _offset(after: str) -> tuple[int, int]:
    if not isinstance(after, str) or not _OFFSET.fullmatch(after):
        raise Invalid(f"bad log offset {after!r}: expected an entry id such as 1712345678901-0")
    ms, _, seq = after.partition("-")
    return int(ms), int(seq or 0)


def _entry(raw_id: bytes, fields: dict[bytes, bytes]) -> Entry:
    end = fields.get(b"end")  # the end entry has no `d`
    status = end.decode() if end is not None else None
    return Entry(raw_id.decode(), fields.get(b"d", b""), int(fields.get(b"t", 0)), status)


def _entries(data: bytes) -> list[bytes]:
    # Cut a large write at line ends into entries of at most MAX_ENTRY bytes; a longer line stays whole.
    out: list[bytes] = []
    start = 0
    while len(data) - start > MAX_ENTRY:
        end = data.rfind(b"\n", start, start + MAX_ENTRY) + 1 or data.find(b"\n", start) + 1 or len(data)
        out.append(data[start:end])
        start = end
    if start < len(data):
        out.append(data[start:])
    return out


class BuildLog:
    """Append to, follow and end one build's log stream; `redis` must not decode responses."""

    def __init__(
        self, redis: redis.Redis, build_id: str, *, masker: Masker | None = None, live_ttl: int = LIVE_TTL
    ) -> None:
        if redis.connection_pool.connection_kwargs.get("decode_responses"):
            raise ValueError("a build log needs a Redis client made with decode_responses=False")
        self.redis = redis
        self.build_id = build_id
        self.key = f"rack:build:{build_id}:log"
        self.masker = masker if masker is not None else Masker()
        self.live_ttl = live_ttl
        self._append_script = redis.register_script(_APPEND)
        self._end_script = redis.register_script(_END)
        self._tag = os.urandom(6).hex()
        self._serial = itertools.count()  # next() on a count is atomic under the GIL

    def encode(self, text: str | bytes) -> bytes:
        """Return `text` masked, as bytes."""
        return self.masker.mask_bytes(text.encode("utf-8", "replace") if isinstance(text, str) else text)

    def append(self, text: str | bytes) -> None:
        """Append one or more lines (or a partial line), masked, stamped with the current time."""
        stamp = str(int(time.time() * 1000))
        flat: list[bytes | str] = []
        for piece in _entries(self.encode(text)):
            flat += (stamp, piece)
        for tag, pairs in self._chunks(flat):
            self._send(tag, pairs)

    def _chunks(self, flat: list[bytes | str]) -> list[tuple[str, list[bytes | str]]]:
        # Each chunk gets its tag once, so resending it after a lost reply cannot add its lines twice.
        step = 2 * BATCH_LINES
        return [(f"{self._tag}:{next(self._serial)}", flat[i : i + step]) for i in range(0, len(flat), step)]

    def _send(self, tag: str, pairs: list[bytes | str]) -> None:
        with _guard():
            added = self._append_script(keys=[self.key], args=[self.live_ttl, tag, *pairs])
        if added == -1:
            log.warning("dropped %d line(s) appended to %s after its end", len(pairs) // 2, self.key)

    def writer(
        self, *, flush_ms: float = 5, flush_lines: int = BATCH_LINES, full_wait: float = FULL_WAIT
    ) -> LogWriter:
        """Return a buffered writer that batches appends; close it (or use `with`) before `end`."""
        return LogWriter(self, flush_ms=flush_ms, flush_lines=flush_lines, full_wait=full_wait)

    def end(self, status: str, *, ttl: int) -> None:
        """Append the end entry with the final status and let the stream expire after `ttl` seconds."""
        if not status:
            raise Invalid("a build log ends with a status")
        with _guard():
            self._end_script(keys=[self.key], args=[status, ttl, int(time.time() * 1000)])

    def read(self, *, after: str = "0-0", block_ms: int | None = None, count: int = 1000) -> list[Entry]:
        """Return up to `count` entries after the offset `after`, waiting up to `block_ms` for the first."""
        _offset(after)
        with _guard():
            reply: Any = self.redis.xread({self.key: after}, count=count, block=block_ms)
        if not reply:
            return []
        rows = next(iter(reply.values()))[0] if isinstance(reply, dict) else reply[0][1]
        return [_entry(raw_id, fields) for raw_id, fields in rows]

    def follow(
        self, *, after: str = "0-0", block_ms: int = 1000, stop: Stop | None = None, count: int = 1000
    ) -> Iterator[Entry]:
        """Yield the entries after `after` as they come, up to and including the end entry."""
        # `stop` is asked before each wait of up to `block_ms`; true ends the iteration with no end entry
        # (the client left, or the build died without one). Resuming after the end entry's own id yields
        # that end entry again, so the caller still learns the status without a repeated line.
        position = _offset(after)
        last = self.last_entry()
        if last is not None and last.end_status is not None and _offset(last.id) <= position:
            yield last
            return
        while stop is None or not stop():
            for entry in self.read(after=after, block_ms=block_ms, count=count):
                yield entry
                if entry.end_status is not None:
                    return
                after = entry.id

    def last_entry(self) -> Entry | None:
        """Return the stream's last entry, or None if it has none."""
        with _guard():
            rows: Any = self.redis.xrevrange(self.key, count=1)
        return _entry(*rows[0]) if rows else None

    def chunks(self, *, page: int = 256) -> Iterator[bytes]:
        """Yield the log so far as it is stored, `page` entries (at most 4 MiB) at a time."""
        start = "-"
        while True:
            with _guard():
                rows: Any = self.redis.xrange(self.key, min=start, count=page)
            for _, fields in rows:  # the end entry is last and has no data
                if data := fields.get(b"d", b""):
                    yield data
            if len(rows) < page:
                return
            start = "(" + rows[-1][0].decode()

    def reader(self) -> BinaryIO:
        """Return the log so far as a file to read, fetched a page at a time (constant memory)."""
        return cast(BinaryIO, _ChunkReader(self.chunks()))

    def text(self) -> bytes:
        """Return the whole log so far as bytes."""
        return b"".join(self.chunks())

    def exists(self) -> bool:
        """Tell whether the stream exists (it has lines or an end and has not expired)."""
        with _guard():
            return bool(self.redis.exists(self.key))


class _ChunkReader(io.RawIOBase):
    """A read-only file over an iterator of byte chunks."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks, self._rest = chunks, b""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        while not self._rest:
            self._rest = next(self._chunks, b"")
            if not self._rest:
                return 0
        n = min(len(buffer), len(self._rest))
        buffer[:n], self._rest = self._rest[:n], self._rest[n:]
        return n


class LogWriter:
    """Batch appends to one build's log; flush every `flush_ms` or `flush_lines` writes, and on close."""

    # `write` raises only for data it did not take: the flusher's last error (once, so the producer learns
    # of an outage), or a buffer still full after `full_wait` seconds. Data it took stays until sent (a
    # failed flush is retried), so a caller may repeat a refused write without repeating a line. At most
    # 4 * flush_lines writes wait in the buffer plus one batch in flight: an outage cannot grow memory.
    def __init__(
        self,
        log: BuildLog,
        *,
        flush_ms: float = 5,
        flush_lines: int = BATCH_LINES,
        full_wait: float = FULL_WAIT,
    ) -> None:
        self.log = log
        self.flush_s = flush_ms / 1000
        self.flush_lines = flush_lines
        self.limit = 4 * flush_lines
        self.full_wait = full_wait
        self._cond = threading.Condition()  # guards the buffer; wakes the flusher and a producer waiting
        self._send_lock = threading.Lock()  # held from taking the buffer to sending it: batches stay in order
        self._buf: list[bytes | str] = []
        self._count = 0
        self._first = 0.0
        self._full = False  # a write waited in vain: refuse at once until the flusher makes room
        self._pending: list[tuple[str, list[bytes | str]]] = []
        self._error: Exception | None = None
        self._closed = False
        self._thread = threading.Thread(
            target=logconfig.in_context(self._run), name=f"log-writer {log.build_id}", daemon=True
        )
        self._thread.start()

    def __enter__(self) -> LogWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def write(self, text: str | bytes) -> None:
        """Buffer one or more lines (or a partial line) stamped with the current time."""
        error, self._error = self._error, None
        if error is not None:
            raise error
        data = self.log.encode(text)
        if not data:
            return
        with self._cond:
            if self._count >= self.limit and not self._closed:
                # The flusher is behind: wait for it rather than grow, but not for every line of an outage.
                room = not self._full and self._cond.wait_for(
                    lambda: self._count < self.limit or self._closed, self.full_wait
                )
                if not room:
                    self._full = True
                    raise Unavailable(
                        f"{self._count} writes wait for the log store (Redis): this one was not taken"
                    )
            if self._closed:
                raise ValueError("write to a closed log writer")
            self._full = False
            stamp = str(int(time.time() * 1000))
            buf, before = self._buf, self._count
            if not before:
                self._first = time.monotonic()
            if buf and buf[-2] == stamp and len(buf[-1]) + len(data) <= MAX_ENTRY:
                buf[-1] = cast(bytes, buf[-1]) + data  # same millisecond: share the entry
            else:
                for piece in _entries(data):
                    buf += (stamp, piece)
            self._count += 1
            if not before or before < self.flush_lines <= self._count:
                self._cond.notify_all()

    def flush(self) -> None:
        """Send every buffered line now."""
        with self._send_lock:
            self._send_pending()  # what a failed flush kept goes first; until then the buffer waits
            with self._cond:
                flat, self._buf, self._count = self._buf, [], 0
                self._cond.notify_all()  # room for a producer waiting in write
            if flat:
                self._pending = self.log._chunks(flat)
                self._send_pending()
            self._error = None

    def _send_pending(self) -> None:
        while self._pending:
            self.log._send(*self._pending[0])  # on Unavailable the chunk stays pending
            self._pending.pop(0)

    def close(self) -> None:
        """Flush what is buffered and stop the flusher thread."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join()
        self.flush()

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._count or self._pending or self._closed)
                # Let a batch gather for flush_ms after its first line, unless it is already big.
                timeout = self._first + self.flush_s - time.monotonic()
                self._cond.wait_for(lambda: self._closed or self._count >= self.flush_lines, timeout)
                if self._closed:
                    return  # close() sends the rest itself
            try:
                self.flush()
            except Exception as exc:  # kept for the producer: the flusher must outlive a failed flush
                self._error = exc
                time.sleep(max(0.2, self.flush_s))

"""Read a build's log from any byte offset: live from its Redis stream, or stored once the build is final.

Offsets count log bytes only. Messages for a person about the log (a build still waiting for a worker, a
failed build with no log at all) are yielded as `Notice` strings, never as bytes, so a client that counts
the bytes it received can resume with `offset=<count>` and get neither a repeated nor a lost byte.

While a build is `created` or `running`, its stream is read from the start (skipping the bytes before the
offset, slicing an entry it falls in) and followed until its end entry. The build row is re-read every
`poll_ms` too, so a build that ends without an end entry (its worker died and the reaper failed it) still
ends the read promptly. A final build is read from its stored log object, or from its stream while the
object is not there yet; both hold the same bytes, so switching from one to the other mid-read is seamless.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable, Generator, Iterator
from typing import BinaryIO

from rack import metrics, objects
from rack.builds import record as builds
from rack.context import Rack
from rack.errors import Invalid, NotFound
from rack.logs import tail
from rack.logs.stream import BuildLog

CHUNK = 64 * 1024
BATCH = 256  # entries per read: up to 4 MiB, as an entry holds up to 16 KiB
END_GRACE_S = 1.0
WAITING = "waiting for a worker to start build {id}…\n"
NO_LOG = "build {id} failed -- no build logs available\n"
Stop = Callable[[], bool]


class Notice(str):
    """A message about a log for a person; not part of the log, so never counted in offsets."""


class _Cursor:
    """Track the log position of the bytes read so far and cut away those before the wanted offset."""

    def __init__(self, offset: int) -> None:
        self.offset = offset
        self.pos = 0

    def take(self, data: bytes) -> bytes:
        """Return the part of `data` (the log's next bytes) at or past the offset."""
        start = self.pos
        self.pos += len(data)
        if self.pos <= self.offset:
            return b""
        return data[self.offset - start :] if start < self.offset else data


class LogStream:
    """A build's log bytes (and notices) from an offset; `build` is the build row when the read began."""

    def __init__(self, build: dict, chunks: Iterator[bytes | Notice]) -> None:
        self.build = build
        self._chunks = chunks

    def __iter__(self) -> Iterator[bytes | Notice]:
        return self._chunks

    def close(self) -> None:
        """Stop reading and release what the read holds."""
        self._chunks.close()  # type: ignore[attr-defined]


def read_log(
    rack: Rack,
    app: str,
    build_id: str,
    *,
    offset: int = 0,
    follow: bool = True,
    poll_ms: int = 2000,
    block_ms: int = 500,
    stop: Stop | None = None,
) -> LogStream:
    """Look up the build (NotFound or Unavailable now, not mid-read) and return its log from byte `offset`."""
    if offset < 0:
        raise Invalid(f"offset must be a byte count of 0 or more, got {offset}")
    row = builds.get(rack, app, build_id)
    if row["status"] not in builds.FINAL:
        BuildLog(rack.redis, build_id).exists()  # Redis away: Unavailable (503) now, not a 200 cut short
    chunks = _read(
        rack, row, _Cursor(offset), follow=follow, poll_s=poll_ms / 1000, block_ms=block_ms, stop=stop
    )
    if follow and row["status"] not in builds.FINAL:
        chunks = metrics.follow(rack, chunks)
    return LogStream(row, chunks)


def _read(
    rack: Rack, row: dict, cursor: _Cursor, *, follow: bool, poll_s: float, block_ms: int, stop: Stop | None
) -> Iterator[bytes | Notice]:
    if row["status"] in builds.FINAL:
        yield from _final(rack, row, cursor)
        return
    if row["status"] == "created":
        yield Notice(WAITING.format(id=row["id"]))
    log = BuildLog(rack.redis, row["id"])
    if not follow:  # what the stream holds now
        after = "0-0"
        while entries := log.read(after=after, count=BATCH):
            if data := cursor.take(b"".join(entry.data for entry in entries)):
                yield data
            if entries[-1].end_status is not None:
                return
            after = entries[-1].id
        return

    def final_row() -> dict | None:
        latest = builds.get(rack, row["app"], row["id"])
        return latest if latest["status"] in builds.FINAL else None

    with tail.follow(log, block_ms=block_ms, poll=final_row, poll_s=poll_s) as shared:
        index = 0
        while True:
            if stop is not None and stop():
                return
            pieces, final = shared.wait(index, block_ms / 1000)
            for piece in pieces:
                index += 1
                if data := cursor.take(piece):  # the shared piece itself once past the offset
                    yield data
                if piece.ended:
                    return
            if not pieces and final is not None:
                # Ended without an end entry yet: serve the rest of what is stored, whichever holds it.
                yield from _final(rack, final, cursor, start=cursor.pos)
                return


def _final(rack: Rack, row: dict, cursor: _Cursor, *, start: int | None = None) -> Iterator[bytes | Notice]:
    """Yield a final build's log from the larger of the offset and `start`: stored object, else stream."""
    skip = max(cursor.offset, start or 0)
    fh = _open_stored(rack, row)
    if fh is not None:
        with fh:
            _skip(fh, skip)
            sent = False
            while chunk := fh.read(CHUNK):
                sent = True
                yield chunk
        if not sent and skip == 0 and row["status"] == "failed":
            yield Notice(NO_LOG.format(id=row["id"]))
        return
    if not (yield from _stream_rest(BuildLog(rack.redis, row["id"]), _Cursor(skip))):
        if skip == 0 and row["status"] == "failed":
            yield Notice(NO_LOG.format(id=row["id"]))


def _stream_rest(log: BuildLog, cursor: _Cursor) -> Generator[bytes, None, bool]:
    """Yield what a final build's stream holds past the offset; return whether it had any entry."""
    # Whoever ended the build may still be adding to the stream (the reaper marks the build failed, then
    # appends its reason and the end entry): a stream with no end entry gets a short grace to complete.
    after, grace = "0-0", None
    while True:
        entries = log.read(after=after, count=BATCH, block_ms=None if grace is None else 100)
        if entries:
            if data := cursor.take(b"".join(entry.data for entry in entries)):
                yield data
            if entries[-1].end_status is not None:
                return True
            after = entries[-1].id
        elif after == "0-0":
            return False
        elif grace is None:
            grace = time.monotonic() + END_GRACE_S
        elif time.monotonic() >= grace:
            return True


def _open_stored(rack: Rack, row: dict) -> BinaryIO | None:
    """Open the build's stored log object, or None when it has none (yet)."""
    if not (row["logs"] or "").startswith("object://"):
        return None
    try:
        app, key = objects.parse_url(row["logs"])
        return objects.open_object(rack, app, key)
    except (NotFound, Invalid):
        return None


def _skip(fh: BinaryIO, count: int) -> None:
    """Move past the first `count` bytes of a stored object, seeking when the store allows it."""
    if not count:
        return
    try:
        fh.seek(count)
        return
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        pass
    while count > 0:
        chunk = fh.read(min(CHUNK, count))
        if not chunk:
            return
        count -= len(chunk)

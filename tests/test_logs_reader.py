"""Reading a build's log by byte offset (rack.logs.reader) on the real Redis, Postgres and object store."""

from __future__ import annotations

import io
import threading

from rack import objects
from rack.logs import reader as buildlogs
from rack.sql import builds as sql


def test_read_log_gives_the_same_bytes_from_every_offset_and_store(rack, sim):
    build = sim()
    build.start()
    build.write_lines(0, 30)
    build.write("partial ✓")
    expected = build.expected()

    def read(offset: int) -> bytes:
        chunks = buildlogs.read_log(rack, "logs", build.id, offset=offset, follow=False)
        return b"".join(chunk for chunk in chunks if isinstance(chunk, bytes))

    offsets = [*range(0, len(expected) + 3, 37), len(expected) - 1, len(expected)]
    assert all(read(off) == expected[off:] for off in offsets)  # running: from the stream
    build.finish(store=False)
    assert all(read(off) == expected[off:] for off in offsets)  # final, object missing: from the stream
    objects.put_bytes_stream(rack, "logs", f"build/{build.id}/logs", io.BytesIO(expected))
    with rack.db.transaction() as conn:
        sql.update(conn, id=build.id, fields={"logs": f"object://logs/build/{build.id}/logs"})
    rack.redis.delete(build.log.key)  # the stream expired: the object alone serves it
    assert all(read(off) == expected[off:] for off in offsets)


def test_a_final_build_waits_briefly_for_the_reapers_last_line(rack, sim):
    build = sim()
    build.start()
    build.write_lines(0, 3)
    build.finish("failed", reason="worker-lost", store=False, end=False)  # the reaper's first step
    late = threading.Timer(
        0.3, lambda: (build.write("ERROR: worker-lost\n"), build.log.end("failed", ttl=60))
    )
    late.start()
    chunks = list(buildlogs.read_log(rack, "logs", build.id))
    assert b"".join(chunks) == build.expected() and build.expected().endswith(b"ERROR: worker-lost\n")

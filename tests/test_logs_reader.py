"""Reading a build's log by byte offset (rack.logs.reader) on the real Redis, Postgres and object store."""

from __future__ import annotations

import io
import threading

from rack import objects
from rack.logs import reader as buildlogs
from rack.sql import builds as sql
from tests.helpers import wait_for


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


def test_followers_of_one_build_in_a_process_share_each_piece_read(rack, sim):
    from rack.logs import tail

    build = sim()
    build.start()
    build.write_lines(0, 20)
    got: dict[int, list[bytes]] = {}

    def follow(n: int, offset: int) -> None:
        got[n] = list(buildlogs.read_log(rack, "logs", build.id, offset=offset, block_ms=100))

    followers = [threading.Thread(target=follow, args=(n, 0 if n < 3 else 5)) for n in range(4)]
    for thread in followers:
        thread.start()
    shared = lambda: (t := tail._tails.get(build.log.key)) is not None and t.users == 4  # noqa: E731
    wait_for(shared, what="four followers on the build's one tail")
    build.write_lines(20, 200, pause=0.001)
    build.finish()
    for thread in followers:
        thread.join(20)
    expected = build.expected()
    assert [b"".join(got[n]) for n in range(4)] == [expected] * 3 + [expected[5:]]
    # one read of the stream, one object, whatever follower sends it (so what it is framed as is made once)
    pieces = [[id(c) for c in got[n] if isinstance(c, tail.Piece)] for n in range(4)]
    assert pieces[0] and pieces[0] == pieces[1] == pieces[2]
    assert pieces[3] == pieces[0][1:]  # the first piece, cut at the offset, is its own bytes
    assert tail.coalesce_s(1) == tail.COALESCE_S + tail.COALESCE_PER_FOLLOWER_S
    assert tail.coalesce_s(100_000) == tail.COALESCE_MAX_S

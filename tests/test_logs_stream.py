"""Build logs on a real redis-server: followers, resuming, ending, expiry, masking, outages."""

from __future__ import annotations

import socket
import subprocess
import threading
import time
import uuid

import pytest
import redis as redis_lib

from rack.errors import Invalid, Unavailable
from rack.logs.masking import Masker, secret_values
from rack.logs.stream import BuildLog, Entry


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_redis(port: int, home) -> subprocess.Popen:
    """Start a throwaway redis-server on `port` and wait until it answers."""
    proc = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        cwd=home,
        stdout=subprocess.DEVNULL,
    )
    client = redis_lib.Redis(port=port)
    deadline = time.monotonic() + 10
    while True:
        try:
            client.ping()
            break
        except redis_lib.ConnectionError:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                raise
            time.sleep(0.05)
    client.close()
    return proc


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory):
    """Run a redis-server for this module (the shared conftest offers one on the whole stack)."""
    port = _free_port()
    proc = start_redis(port, tmp_path_factory.mktemp("redis"))
    yield port
    proc.kill()
    proc.wait()


@pytest.fixture
def redis_client(redis_server):
    r = redis_lib.Redis(port=redis_server)
    r.flushdb()
    yield r
    r.close()


def new_log(r: redis_lib.Redis, **kw) -> BuildLog:
    return BuildLog(r, f"B{uuid.uuid4().hex[:10]}", **kw)


def collect(log: BuildLog, out: list[Entry], **kw) -> threading.Thread:
    """Follow `log` in a thread, appending every entry to `out`."""

    def run() -> None:
        out.extend(log.follow(block_ms=100, **kw))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def joined(entries: list[Entry]) -> bytes:
    return b"".join(e.data for e in entries)


def test_three_followers_receive_the_same_log_and_status(redis_client):
    log = new_log(redis_client)
    early: list[Entry] = []
    middle: list[Entry] = []
    threads = [collect(log, early)]
    time.sleep(0.1)  # the early follower is blocked on a stream that does not exist yet
    with log.writer() as w:
        for i in range(500):
            w.write(f"Step {i}: RUN make ünïcode \x1b[1mbold\x1b[0m\n")
            if i == 250:
                w.flush()
                threads.append(collect(log, middle))
            if i % 50 == 0:
                time.sleep(0.01)
        w.write("a partial line without newline")
    log.end("failed", ttl=60)
    late = list(log.follow(block_ms=100))
    for t in threads:
        t.join(10)
    expected = log.text()
    assert expected.count(b"\n") == 500 and expected.endswith(b"without newline")
    for entries in (early, middle, late):
        assert joined(entries) == expected
        assert entries[-1].end_status == "failed" and entries[-1].data == b""
        assert [e.end_status for e in entries[:-1]] == [None] * (len(entries) - 1)


def test_resuming_from_the_last_id_loses_and_repeats_nothing(redis_client):
    log = new_log(redis_client)
    received: list[Entry] = []

    def writer() -> None:
        for i in range(3000):
            log.append(f"line {i}\n")  # one entry each, so the cuts fall between lines
            if i % 100 == 0:
                time.sleep(0.005)
        log.end("complete", ttl=60)

    thread = threading.Thread(target=writer)
    thread.start()
    after = "0-0"
    cuts = 0
    while not received or received[-1].end_status is None:
        for n, entry in enumerate(log.follow(after=after, block_ms=100), 1):
            received.append(entry)
            after = entry.id
            if n == 97:  # the connection is cut mid-build
                cuts += 1
                break
    thread.join()
    assert cuts > 3
    assert joined(received) == b"".join(b"line %d\n" % i for i in range(3000))
    assert len({e.id for e in received}) == len(received)
    assert received[-1].end_status == "complete"


def test_concurrent_writer_and_five_followers_receive_every_line_in_order(redis_client):
    log = new_log(redis_client)
    outs: list[list[Entry]] = [[] for _ in range(5)]
    threads = [collect(log, out) for out in outs]

    def write() -> None:
        with log.writer() as w:
            for i in range(20_000):
                w.write(f"{i:05d} Step 3/9 : RUN pip install -r requirements.txt\n")
        log.end("complete", ttl=60)

    writer = threading.Thread(target=write)
    writer.start()
    writer.join(60)
    for t in threads:
        t.join(60)
    expected = b"".join(b"%05d Step 3/9 : RUN pip install -r requirements.txt\n" % i for i in range(20_000))
    for out in outs:
        assert joined(out) == expected
        assert out[-1].end_status == "complete"
        assert len(out) < 20_000  # lines written in the same millisecond share an entry


def test_end_is_idempotent_and_later_lines_are_refused(redis_client, caplog):
    log = new_log(redis_client)
    log.append("one\n")
    log.end("complete", ttl=60)
    log.end("failed", ttl=60)
    log.append("too late\n")
    entries = log.read()
    assert [e.end_status for e in entries] == [None, "complete"]
    assert log.text() == b"one\n"
    assert "after its end" in caplog.text


def test_a_log_with_no_line_still_ends(redis_client):
    log = new_log(redis_client)
    assert not log.exists()
    log.end("failed", ttl=60)
    assert log.exists()
    assert [(e.data, e.end_status) for e in log.follow()] == [(b"", "failed")]


def test_resuming_after_the_end_yields_only_the_end(redis_client):
    log = new_log(redis_client)
    log.append("a\nb\n")
    log.end("complete", ttl=60)
    end = log.read()[-1]
    assert list(log.follow(after=end.id)) == [end]
    assert list(log.follow(after=log.read()[0].id)) == log.read()[1:]


def test_expiry_is_set_at_the_end(redis_client):
    log = new_log(redis_client, live_ttl=86_400)
    log.append("building\n")
    assert 3600 < redis_client.ttl(log.key) <= 86_400  # a live build is not expired soon
    log.end("complete", ttl=120)
    assert 0 < redis_client.ttl(log.key) <= 120
    short = new_log(redis_client)
    short.append("x\n")
    short.end("complete", ttl=1)
    time.sleep(1.2)
    assert not short.exists()


def test_entries_carry_time_and_bytes(redis_client):
    log = new_log(redis_client)
    before = int(time.time() * 1000)
    log.append(b"caf\xc3\xa9 \xff\xfe raw\r\nprogress 10%\rprogress 20%\n")
    log.append("")
    log.append("partial ")
    log.append("line\n")
    entries = log.read()
    assert [e.data for e in entries] == [
        b"caf\xc3\xa9 \xff\xfe raw\r\nprogress 10%\rprogress 20%\n",
        b"partial ",
        b"line\n",
    ]
    assert all(before <= e.time_ms <= time.time() * 1000 for e in entries)
    assert redis_client.xrange(f"rack:build:{log.build_id}:log")[0][1][b"d"] == entries[0].data


def test_a_large_write_is_cut_at_line_ends(redis_client):
    log = new_log(redis_client)
    text = b"".join(b"%06d %s\n" % (i, b"x" * 90) for i in range(1000)) + b"y" * 40_000 + b"\nend"
    log.append(text)
    with log.writer() as w:
        w.write(text)
    sizes = [len(e.data) for e in log.read()]
    assert log.text() == text + text
    half = len(sizes) // 2
    for part in (sizes[:half], sizes[half:]):
        assert max(part[:-2]) <= 16 * 1024 and part[-2:] == [40_001, 3]  # a longer line stays whole
    assert [e.data.endswith(b"\n") for e in log.read()].count(False) == 2


def test_secrets_are_masked_before_they_reach_redis(redis_client):
    args = {"NPM_TOKEN": "npm_abc123", "DB_PASSWORD": "hunter22", "DEBUG": "true"}
    log = new_log(redis_client, masker=Masker(secret_values(args, ["registry-pass"])))
    log.append("npm config set //registry/:_authToken=npm_abc123\n")
    with log.writer() as w:
        w.write("login -p registry-pass\nDEBUG=true psql postgres://u:hunter22@db\n")
        w.write(b"bytes hunter22 \xff\n")
    log.end("complete", ttl=60)
    stored = b"".join(f[b"d"] for _, f in redis_client.xrange(log.key) if b"d" in f)
    assert stored == (
        b"npm config set //registry/:_authToken=***\n"
        b"login -p ***\nDEBUG=true psql postgres://u:***@db\n"
        b"bytes *** \xff\n"
    )


def test_a_retried_batch_is_stored_once(redis_client):
    log = new_log(redis_client)
    [(tag, pairs)] = log._chunks(["1", b"a\n", "1", b"b\n"])
    log._send(tag, pairs)
    log._send(tag, pairs)  # as after a reply lost with the connection
    assert log.text() == b"a\nb\n"


def test_stop_ends_following_without_an_end(redis_client):
    log = new_log(redis_client)
    log.append("waiting\n")
    stop = threading.Event()
    threading.Timer(0.2, stop.set).start()
    started = time.monotonic()
    entries = list(log.follow(block_ms=50, stop=stop.is_set))
    assert [e.data for e in entries] == [b"waiting\n"]
    assert time.monotonic() - started < 2


def test_a_bad_offset_is_invalid(redis_client):
    log = new_log(redis_client)
    for offset in ("$", "abc", "1-2-3", ""):
        with pytest.raises(Invalid):
            log.read(after=offset)
        with pytest.raises(Invalid):
            next(log.follow(after=offset))


def test_a_decoding_client_is_refused(redis_server):
    with pytest.raises(ValueError):
        BuildLog(redis_lib.Redis(port=redis_server, decode_responses=True), "B1")


def test_redis_going_away_is_unavailable():
    r = redis_lib.Redis(port=_free_port(), socket_connect_timeout=0.5, retry=None)
    log = BuildLog(r, "B1")
    calls = [
        lambda: log.append("x\n"),
        lambda: log.end("failed", ttl=60),
        lambda: log.read(),
        lambda: next(log.follow()),
        log.text,
        log.exists,
    ]
    for call in calls:
        with pytest.raises(Unavailable, match=r"^the log store \(Redis\) is unreachable: "):
            call()
    w = log.writer(flush_ms=1)
    w.write("kept\n")
    with pytest.raises(Unavailable):
        w.close()


def test_a_writer_keeps_its_lines_while_redis_is_away(tmp_path):
    port = _free_port()
    log = BuildLog(redis_lib.Redis(port=port, socket_connect_timeout=0.5), "B1")
    w = log.writer(flush_ms=1)
    w.write("kept while away\n")
    deadline = time.monotonic() + 10
    while w._error is None and time.monotonic() < deadline:
        time.sleep(0.01)
    with pytest.raises(Unavailable):
        w.write("not taken\n")  # the producer learns of the outage
    proc = start_redis(port, tmp_path)
    try:
        while log.text() != b"kept while away\n" and time.monotonic() < deadline:
            time.sleep(0.02)  # the flusher retries by itself
        w.write("after\n")
        w.close()
        assert log.text() == b"kept while away\nafter\n"
    finally:
        proc.kill()
        proc.wait()


def outage(log: BuildLog) -> threading.Event:
    """Make the log's appends fail as a refused Redis connection would while the returned event is set."""
    down = threading.Event()
    append = log._append_script

    def script(**kw):
        if down.is_set():
            raise redis_lib.ConnectionError("Error 111 connecting to 127.0.0.1. Connection refused.")
        return append(**kw)

    log._append_script = script
    return down


def test_a_short_outage_neither_repeats_nor_loses_a_line(redis_client):
    from rack.pipeline.steps import Output

    log = new_log(redis_client)
    down = outage(log)
    out = Output(log, writer=log.writer(flush_ms=1, flush_lines=2))
    lines = [f"line {i}\n" for i in range(400)]
    for i, line in enumerate(lines):
        if i == 20:
            down.set()
            threading.Timer(0.5, down.clear).start()
        out.write(line)
        time.sleep(0.002)
    stored = out.close().read()
    assert stored == "".join(lines).encode()
    assert log.text() == stored  # the live stream too: every line once, in order


def test_a_long_outage_keeps_the_writer_small_and_the_stored_log_whole(redis_client, caplog):
    from rack.pipeline.steps import Output

    log = new_log(redis_client)
    down = outage(log)
    writer = log.writer(flush_ms=1, flush_lines=2, full_wait=0.2)
    out = Output(log, writer=writer)
    lines = [f"line {i}\n" for i in range(2000)]
    down.set()
    began = time.monotonic()
    for line in lines:
        out.write(line)
        held = writer._count + sum(len(pairs) // 2 for _, pairs in writer._pending)
        assert held <= 2 * writer.limit  # the buffer, plus one batch waiting to be sent
    assert time.monotonic() - began < 5  # the producer waited for the flusher once, not once a line
    down.clear()
    assert out.close().read() == "".join(lines).encode()  # the worker's copy has what the stream missed
    assert "lines left out of the live log" in caplog.text
    live = log.text().decode().splitlines(keepends=True)
    assert 0 < len(live) < len(lines)
    assert live == sorted(set(live), key=lines.index)  # no line twice, none out of order

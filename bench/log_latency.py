"""Measure build-log latency and throughput end to end: BuildLog writer → Redis → API (gunicorn) → websocket.

Run: .venv/bin/python bench/log_latency.py [--lines 2000] [--pace-ms 1] [--burst 200000] [--followers 10]

A throwaway stack (Postgres, Redis, and the API under gunicorn's gevent worker, as production runs it) is
started in a temp folder. Latency: a writer appends lines at a steady pace through `BuildLog.writer()` (as
the worker does) and, for comparison, plain `append`; a websocket follower in another process stamps each
line on receipt; figures are the time from the line's write to its receipt. Throughput: one writer pushes a
burst of lines as fast as it can while N websocket followers (processes) are attached; each checks it got
every byte (line count and CRC-32 against the writer's). Bench/log_stream.py measures the Redis leg alone.
"""

from __future__ import annotations

import argparse
import base64
import io
import multiprocessing as mp
import shutil
import statistics
import sys
import tempfile
import time
import zlib
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import websocket  # noqa: E402
from log_stream import PAD  # noqa: E402

from rack import apps, objects  # noqa: E402
from rack.builds import record as builds  # noqa: E402
from rack.config import load_settings  # noqa: E402
from rack.context import Rack  # noqa: E402
from rack.logs.stream import BuildLog  # noqa: E402
from rack.sql import builds as sql  # noqa: E402
from rack_stack import Stack  # noqa: E402

DEADLINE_S = 40  # every phase gives up by then, so the whole run stays well under two minutes
APP = "bench"


def connect(api: str, password: str, build_id: str) -> websocket.WebSocket:
    """Open the build's log websocket as Convox's client does (options as headers)."""
    token = base64.b64encode(f"convox:{password}".encode()).decode()
    url = api.replace("http://", "ws://") + f"/apps/{APP}/builds/{build_id}/logs"
    headers = [f"Authorization: Basic {token}", "Offset: 0"]
    # websocket-client checks UTF-8 in pure Python (a few MB/s): the follower would measure itself.
    return websocket.create_connection(url, header=headers, timeout=10, skip_utf8_validation=True)


def frames(ws: websocket.WebSocket, stop_at: float):
    """Yield the log's bytes frame by frame until the empty binary frame; TimeoutError past the deadline."""
    while time.monotonic() < stop_at:
        opcode, data = ws.recv_data()
        if opcode == websocket.ABNF.OPCODE_BINARY and not data:
            return
        yield data
    raise TimeoutError("the log did not end in time")


def follow_latency(api: str, password: str, build_id: str, ready, results) -> None:
    """Follow a log over the websocket; report each line's write-to-receipt time in ms."""
    ws = connect(api, password, build_id)
    ready.set()
    latencies, partial = [], b""
    for data in frames(ws, time.monotonic() + DEADLINE_S):
        received = time.monotonic_ns()
        *lines, partial = (partial + data).split(b"\n")
        latencies += [(received - int(line.split(b" ", 2)[1])) / 1e6 for line in lines]
    ws.close()
    results.put((latencies, True))


def follow_count(api: str, password: str, build_id: str, ready, results) -> None:
    """Follow a log over the websocket; report the lines received, their CRC-32, and when the end came."""
    ws = connect(api, password, build_id)
    ready.set()
    lines = crc = 0
    for data in frames(ws, time.monotonic() + DEADLINE_S):
        lines += data.count(b"\n")  # C-speed checks: measure the log's path, not the checking
        crc = zlib.crc32(data, crc)
    results.put((lines, crc, time.monotonic()))
    ws.close()


def spawn(ctx, target, api: str, password: str, build_id: str, n: int, results) -> list:
    procs = []
    for _ in range(n):
        ready = ctx.Event()
        proc = ctx.Process(target=target, args=(api, password, build_id, ready, results), daemon=True)
        proc.start()
        procs.append((proc, ready))
    for _, ready in procs:
        ready.wait(20)
    time.sleep(0.3)  # let every follower reach its blocking read
    return [proc for proc, _ in procs]


def running_build(rack: Rack) -> str:
    """Create a build and mark it running, as a worker claiming it would."""
    build_id = builds.create(rack, APP, url=f"object://{APP}/tmp/src.tgz")["id"]
    with rack.db.transaction() as conn:
        sql.mark_running(conn, id=build_id, process="bench")
    return build_id


def finish(rack: Rack, log: BuildLog) -> None:
    """Store the log, mark the build complete, then end the stream: the worker's order."""
    url = objects.put_bytes_stream(rack, APP, f"build/{log.build_id}/logs", io.BytesIO(log.text()))
    with rack.db.transaction() as conn:
        sql.finish(conn, id=log.build_id, status="complete", fields={"logs": url})
    log.end("complete", ttl=300)


def latency(ctx, rack: Rack, api: str, lines: int, pace_ms: float, buffered: bool) -> None:
    log = BuildLog(rack.redis, running_build(rack))
    results = ctx.Queue()
    procs = spawn(ctx, follow_latency, api, rack.settings.password, log.build_id, 1, results)
    sink = log.writer() if buffered else None
    write = sink.write if sink else log.append
    start = time.monotonic()
    for i in range(lines):
        # Steady pace: sleep to the i-th tick instead of a fixed gap, so slow writes don't drift.
        delay = start + i * pace_ms / 1000 - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        write(f"{i} {time.monotonic_ns()} Step 2/5 : RUN apk add {PAD}\n")
    if sink:
        sink.close()
    finish(rack, log)
    got, ended = results.get(timeout=DEADLINE_S + 5)
    for proc in procs:
        proc.join(5)
    got.sort()
    how = "writer() batching, flush 5 ms" if buffered else "append() per line"
    print(f"latency, {how}: {len(got)}/{lines} lines at one every {pace_ms} ms, end frame: {ended}")
    p99 = got[max(int(len(got) * 0.99) - 1, 0)]
    median = statistics.median(got)
    print(f"  p50 {median:.2f} ms   p99 {p99:.2f} ms   max {got[-1]:.2f} ms   (goal: p99 < 50 ms)")


def throughput(ctx, rack: Rack, api: str, lines: int, followers: int) -> None:
    log = BuildLog(rack.redis, running_build(rack))
    results = ctx.Queue()
    procs = spawn(ctx, follow_count, api, rack.settings.password, log.build_id, followers, results)
    crc = 0
    start = time.monotonic()
    with log.writer() as w:
        for i in range(lines):
            line = f"{i} Step 4/9 : RUN pip install -r requirements.txt {PAD}\n"
            w.write(line)
            crc = zlib.crc32(line.encode(), crc)
    written = time.monotonic()
    finish(rack, log)
    reports = [results.get(timeout=DEADLINE_S + 5) for _ in procs]
    for proc in procs:
        proc.join(5)
    complete = all(n == lines and c == crc for n, c, _ in reports)
    last = max(at for *_, at in reports)
    print(f"throughput: 1 writer, {followers} websocket followers attached, {lines} lines of ~80 bytes")
    pushed, delivered = lines / (written - start), lines / (last - start)
    print(f"  written in {written - start:.2f} s: {pushed:,.0f} lines/s pushed (goal: 50,000)")
    print(f"  all followers done in {last - start:.2f} s: {delivered:,.0f} lines/s delivered to each")
    counts = sorted({n for n, *_ in reports})
    verdict = "yes" if complete else "NO"
    print(f"  every follower got every line, byte for byte (CRC-32): {verdict} (line counts {counts})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=2000, help="lines for the latency runs")
    parser.add_argument("--pace-ms", type=float, default=1.0, help="gap between lines in the latency runs")
    parser.add_argument("--burst", type=int, default=200_000, help="lines for the throughput run")
    parser.add_argument("--followers", type=int, default=10)
    args = parser.parse_args()
    ctx = mp.get_context("spawn")
    home = Path(tempfile.mkdtemp(prefix="rack-bench-", dir="/tmp"))
    home.chmod(0o755)
    stack = Stack(home, fast=True)
    began = time.monotonic()
    try:
        stack.start(services=("postgres", "redis", "api"))
        api = stack.services["api"].address
        print(f"stack up in {time.monotonic() - began:.1f} s; API under gunicorn (gevent) at {api}")
        rack = Rack(load_settings(stack.env), enqueue_build=lambda build_id: None)
        apps.create(rack, name=APP)
        objects.put_bytes_stream(rack, APP, "tmp/src.tgz", io.BytesIO(b"source"))
        latency(ctx, rack, api, args.lines, args.pace_ms, buffered=True)
        latency(ctx, rack, api, args.lines, args.pace_ms, buffered=False)
        throughput(ctx, rack, api, args.burst, args.followers)
        rack.close()
    finally:
        stack.stop()
        shutil.rmtree(home, ignore_errors=True)
    print(f"total {time.monotonic() - began:.1f} s")


if __name__ == "__main__":
    main()

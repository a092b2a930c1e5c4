"""Measure build-log latency and throughput through a real redis-server.

Run: .venv/bin/python bench/log_stream.py [--lines 2000] [--pace-ms 1] [--burst 200000] [--followers 10]

Latency: one writer appends lines at a steady pace through `BuildLog.writer()` (and, for comparison, with
plain `append`); a follower in another process (as the API is) stamps each line on receipt. Figures are
the time from the line's write to its receipt. Throughput: one writer pushes a burst of lines as fast as it
can while N follower processes are attached; every follower checks the count and a CRC-32 of all it got.
The websocket leg is not measured here yet: these figures are the Redis leg a websocket handler sits on.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

import redis

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rack.logs.stream import BuildLog  # noqa: E402

DEADLINE_S = 50  # every phase gives up by then, so the whole run stays under a minute
PAD = "#" * 60  # lines of ~80 bytes, like a Docker build's


def start_redis() -> tuple[subprocess.Popen, int]:
    """Start a throwaway redis-server on a free port."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        cwd=tempfile.mkdtemp(prefix="rack-bench-redis-"),
        stdout=subprocess.DEVNULL,
    )
    client = redis.Redis(port=port)
    for _ in range(200):
        try:
            client.ping()
            return proc, port
        except redis.ConnectionError:
            time.sleep(0.05)
    proc.kill()
    raise SystemExit("redis-server did not start")


def follow_latency(port: int, build_id: str, ready, results) -> None:
    """Follow a log; report each line's write-to-receipt time in ms."""
    log = BuildLog(redis.Redis(port=port), build_id)
    stop_at = time.monotonic() + DEADLINE_S
    ready.set()
    latencies = []
    status = None
    for entry in log.follow(block_ms=200, stop=lambda: time.monotonic() > stop_at):
        received = time.monotonic_ns()
        if entry.end_status is not None:
            status = entry.end_status
            break
        for line in entry.data.splitlines():  # lines written in the same ms share an entry
            latencies.append((received - int(line.split(b" ", 2)[1])) / 1e6)
    results.put((latencies, status))


def follow_count(port: int, build_id: str, ready, results) -> None:
    """Follow a log; report the lines received, a CRC of their bytes, and when the end came."""
    log = BuildLog(redis.Redis(port=port), build_id)
    stop_at = time.monotonic() + DEADLINE_S
    ready.set()
    lines = crc = 0
    status = None
    for entry in log.follow(block_ms=200, stop=lambda: time.monotonic() > stop_at, count=5000):
        if entry.end_status is not None:
            status = entry.end_status
            break
        # C-speed checks, so that ten followers on a small machine measure the log, not the checking.
        lines += entry.data.count(b"\n")
        crc = zlib.crc32(entry.data, crc)
    results.put((lines, crc, status, time.monotonic()))


def spawn(ctx, target, port: int, build_id: str, n: int, results) -> list:
    procs = []
    for _ in range(n):
        ready = ctx.Event()
        proc = ctx.Process(target=target, args=(port, build_id, ready, results), daemon=True)
        proc.start()
        procs.append((proc, ready))
    for _, ready in procs:
        ready.wait(20)
    time.sleep(0.3)  # let them reach their blocking XREAD
    return [proc for proc, _ in procs]


def latency(ctx, port: int, lines: int, pace_ms: float, buffered: bool) -> None:
    build_id = f"lat-{'writer' if buffered else 'append'}"
    log = BuildLog(redis.Redis(port=port), build_id)
    results = ctx.Queue()
    procs = spawn(ctx, follow_latency, port, build_id, 1, results)
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
    log.end("complete", ttl=60)
    got, status = results.get(timeout=DEADLINE_S + 5)
    for proc in procs:
        proc.join(5)
    got.sort()
    how = "writer() batching, flush 5 ms" if buffered else "append() per line"
    print(f"latency, {how}: {len(got)}/{lines} lines at one every {pace_ms} ms, end={status}")
    print(
        f"  p50 {statistics.median(got):.2f} ms   p99 {got[int(len(got) * 0.99) - 1]:.2f} ms"
        f"   max {got[-1]:.2f} ms"
    )


def throughput(ctx, port: int, lines: int, followers: int) -> None:
    build_id = "tput"
    log = BuildLog(redis.Redis(port=port), build_id)
    results = ctx.Queue()
    procs = spawn(ctx, follow_count, port, build_id, followers, results)
    sent = [f"{i} Step 4/9 : RUN pip install -r requirements.txt {PAD}\n" for i in range(lines)]
    crc = zlib.crc32("".join(sent).encode())
    start = time.monotonic()
    with log.writer() as w:
        for line in sent:
            w.write(line)
    written = time.monotonic()
    log.end("complete", ttl=60)
    reports = [results.get(timeout=DEADLINE_S + 5) for _ in procs]
    for proc in procs:
        proc.join(5)
    complete = all(report[:3] == (lines, crc, "complete") for report in reports)
    last = max((at for *_, at in reports), default=written)
    print(f"throughput: 1 writer, {followers} followers attached, {lines} lines of ~80 bytes")
    print(f"  written in {written - start:.2f} s: {lines / (written - start):,.0f} lines/s pushed")
    print(f"  every follower done in {last - start:.2f} s: {lines / (last - start):,.0f} lines/s each")
    counts = sorted({n for n, *_ in reports})
    verdict = "yes" if complete else "NO"
    print(f"  every follower got every line, byte for byte in order (CRC-32): {verdict} (counts {counts})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=2000, help="lines for the latency runs")
    parser.add_argument("--pace-ms", type=float, default=1.0, help="gap between lines in the latency runs")
    parser.add_argument("--burst", type=int, default=200_000, help="lines for the throughput run")
    parser.add_argument("--followers", type=int, default=10)
    args = parser.parse_args()
    ctx = mp.get_context("spawn")
    proc, port = start_redis()
    try:
        latency(ctx, port, args.lines, args.pace_ms, buffered=True)
        latency(ctx, port, args.lines, args.pace_ms, buffered=False)
        throughput(ctx, port, args.burst, args.followers)
    finally:
        proc.kill()
        proc.wait()


if __name__ == "__main__":
    main()

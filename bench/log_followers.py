"""Measure what log followers cost the API: request p99 and memory, with no followers and with 1,000.

Run: .venv/bin/python bench/log_followers.py [--followers 1000] [--requests 200]

A throwaway stack (Postgres, Redis, the API under gunicorn's gevent workers, as production runs it) is
started in a temp folder. Phase one: GET /apps and POST builds are timed with no log followers. Phase two:
the given number of followers (half websocket, half chunked, on one loop per child process: they stand for
clients on other machines, so their own cost stays small on this one) follow one running build
whose log grows while the same requests are timed again. Printed side by side: each request's p50 and p99,
and the API processes' resident memory, with the memory each follower adds.
"""

from __future__ import annotations

import argparse
import io
import multiprocessing as mp
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import psutil  # noqa: E402
import requests  # noqa: E402

from rack import apps, objects  # noqa: E402
from rack.builds import record as builds  # noqa: E402
from rack.config import load_settings  # noqa: E402
from rack.context import Rack  # noqa: E402
from rack.logs.stream import BuildLog  # noqa: E402
from rack.sql import builds as sql  # noqa: E402
from rack_stack import Stack  # noqa: E402
from tests.helpers import Crowd, basic  # noqa: E402

APP = "bench"
PER_CHILD = 500


def follow_many(api: str, password: str, build_id: str, count: int, ready, done) -> None:
    """In a child process: `count` followers on one loop; report when all are connected, then when ended."""
    crowd = Crowd(api, password, APP, build_id, count)
    crowd.connect(300)
    ready.put(count)
    done.put([len(data) if ended else -1 for ended, data in crowd.run(300)])


def rss(pid: int) -> int:
    top = psutil.Process(pid)
    return sum(p.memory_info().rss for p in [top, *top.children(recursive=True)])


def timed(api: str, password: str, count: int) -> dict[str, list[float]]:
    session = requests.Session()
    times: dict[str, list[float]] = {"GET /apps": [], "POST builds": []}
    for _ in range(count):
        for what in times:
            began = time.monotonic()
            if what == "GET /apps":
                r = session.get(f"{api}/apps", headers=basic(password), timeout=30)
            else:
                r = session.post(
                    f"{api}/apps/{APP}/builds",
                    data={"url": f"object://{APP}/tmp/src.tgz"},
                    headers=basic(password),
                )
            assert r.status_code == 200, r.text
            times[what].append(time.monotonic() - began)
    return times


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))] * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--followers", type=int, default=1000)
    parser.add_argument("--requests", type=int, default=200)
    args = parser.parse_args()
    os.environ["RACK_CONNECTIONS_PER_ADDRESS"] = str(args.followers + 100)  # all from 127.0.0.1 here
    load_before = " ".join(f"{n:.2f}" for n in os.getloadavg())
    home = Path(tempfile.mkdtemp(prefix="rack-bench-", dir="/tmp"))
    home.chmod(0o755)
    stack = Stack(home, fast=True)
    began = time.monotonic()
    try:
        stack.start(services=("postgres", "redis", "api"))
        api, pid = stack.services["api"].address, stack.services["api"].pid()
        assert pid is not None
        rack = Rack(load_settings(stack.env), enqueue_build=lambda build_id: None)
        apps.create(rack, name=APP)
        objects.put_bytes_stream(rack, APP, "tmp/src.tgz", io.BytesIO(b"source"))
        timed(api, stack.password, 10)  # each process loads Celery on its first enqueue
        base_rss = rss(pid)
        base = timed(api, stack.password, args.requests)

        build_id = builds.create(rack, APP, url=f"object://{APP}/tmp/src.tgz")["id"]
        with rack.db.transaction() as conn:
            sql.mark_running(conn, id=build_id, process="bench")
        log = BuildLog(rack.redis, build_id)
        log.append("started\n")
        ctx = mp.get_context("fork")
        ready, done = ctx.Queue(), ctx.Queue()
        counts = [PER_CHILD] * (args.followers // PER_CHILD) + (
            [args.followers % PER_CHILD] if args.followers % PER_CHILD else []
        )
        children = [
            ctx.Process(target=follow_many, args=(api, stack.password, build_id, n, ready, done))
            for n in counts
        ]
        for child in children:
            child.start()
        attached = sum(ready.get(timeout=300) for _ in children)
        stop = threading.Event()

        def grow() -> None:
            i = 0
            while not stop.wait(0.05):
                log.append("".join(f"line {i + k} of the growing log\n" for k in range(20)))
                i += 20

        writer = threading.Thread(target=grow, daemon=True)
        writer.start()
        time.sleep(1)
        loaded_rss = rss(pid)
        loaded = timed(api, stack.password, args.requests)
        loaded_rss = max(loaded_rss, rss(pid))
        stop.set()
        writer.join()
        log.end("complete", ttl=60)
        expected = len(log.text())
        received = [n for _ in children for n in done.get(timeout=300)]
        for child in children:
            child.join(30)
        rack.close()
    finally:
        stack.stop()
        shutil.rmtree(home, ignore_errors=True)
    load_after = " ".join(f"{n:.2f}" for n in os.getloadavg())

    print(f"API: gunicorn gevent workers; {attached} followers ({attached // 2} websocket, the rest chunked)")
    print(f"{'':14} {'no followers':>24} {f'{attached} followers':>24}")
    for what in base:
        cells = [f"p50 {pct(t[what], 0.5):5.0f} ms  p99 {pct(t[what], 0.99):5.0f} ms" for t in (base, loaded)]
        ratio = pct(loaded[what], 0.99) / pct(base[what], 0.99)
        print(f"{what:14} {cells[0]:>24} {cells[1]:>24}   p99 ratio {ratio:.1f}x")
    print(f"{'API RSS':14} {base_rss / 2**20:21.0f} MiB {loaded_rss / 2**20:21.0f} MiB")
    print(f"memory per follower: {(loaded_rss - base_rss) / max(attached, 1) / 1024:.0f} KiB")
    whole = sum(1 for n in received if n == expected)
    print(f"followers that got the whole {expected}-byte log: {whole} of {len(received)}")
    print(f"total {time.monotonic() - began:.1f} s; load average {load_before} before, {load_after} after")


if __name__ == "__main__":
    main()

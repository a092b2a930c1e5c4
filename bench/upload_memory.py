"""Upload 1 GiB through the API under gunicorn and watch its memory: it must stay flat.

Prints the API processes' peak resident memory during a 1 MiB and a 1 GiB upload, measured in the same
run, and their ratio. Goal: the 1 GiB peak under 150 MiB. Exits non-zero when the goal is missed or the
stored object is not exactly the bytes sent.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rack_stack import Stack  # noqa: E402

MiB = 1024 * 1024
GOAL_MIB = 150


class Generated:
    """A file-like body of `size` bytes made on the fly, so the client holds none of it."""

    def __init__(self, size: int) -> None:
        self.size, self.sent = size, 0
        self.block = bytes(range(256)) * (MiB // 256)

    def __len__(self) -> int:
        return self.size

    def read(self, n: int = -1) -> bytes:
        n = min(MiB if n is None or n < 0 else n, self.size - self.sent, len(self.block))
        self.sent += n
        return self.block[:n]


def api_processes(stack: Stack) -> list[psutil.Process]:
    master = psutil.Process(stack.services["api"].pid())
    return [master, *master.children(recursive=True)]


def peak_during(stack: Stack, work) -> tuple[float, object]:
    """Run `work()` while sampling the API processes' RSS every 20 ms; return the peak (MiB) and result."""
    procs = api_processes(stack)
    peak = 0.0
    done = threading.Event()
    result: dict = {}

    def run():
        result["value"] = work()
        done.set()

    threading.Thread(target=run).start()
    while not done.is_set():
        peak = max(peak, max(p.memory_info().rss for p in procs) / MiB)
        time.sleep(0.02)
    return peak, result["value"]


def upload(stack: Stack, key: str, size: int) -> dict:
    url = f"{stack.env['RACK_API_URL']}/apps/bench/objects/{key}"
    resp = requests.post(
        url,
        data=Generated(size),
        auth=("convox", stack.password),
        headers={"Content-Type": "application/octet-stream"},
        timeout=600,
    )
    resp.raise_for_status()
    return resp.json()


def main() -> int:
    home = Path(tempfile.mkdtemp(prefix="rack-bench-", dir="/tmp"))
    home.chmod(0o755)
    stack = Stack(home, fast=True)
    try:
        stack.start(["postgres", "redis", "api"])
        auth = ("convox", stack.password)
        requests.post(
            f"{stack.env['RACK_API_URL']}/apps", data={"name": "bench"}, auth=auth
        ).raise_for_status()
        small_peak, _ = peak_during(stack, lambda: upload(stack, "tmp/small.tgz", MiB))
        started = time.monotonic()
        big_peak, body = peak_during(stack, lambda: upload(stack, "tmp/big.tgz", 1024 * MiB))
        seconds = time.monotonic() - started
        stored = home / "objects" / "bench" / "tmp" / "big.tgz"
        size = stored.stat().st_size
        print(f"1 MiB upload: API peak RSS {small_peak:.1f} MiB")
        print(
            f"1 GiB upload: API peak RSS {big_peak:.1f} MiB in {seconds:.1f} s ({1024 / seconds:.0f} MiB/s)"
        )
        print(
            f"ratio 1 GiB peak / 1 MiB peak: {big_peak / small_peak:.2f} (goal: flat, peak < {GOAL_MIB} MiB)"
        )
        print(f"stored {size} bytes as {body['Url']}")
        ok = big_peak < GOAL_MIB and size == 1024 * MiB
        print("PASS" if ok else "FAIL")
        return 0 if ok else 1
    finally:
        stack.stop()
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())

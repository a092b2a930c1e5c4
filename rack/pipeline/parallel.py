"""Build and push a build's services side by side: a few at a time, each one's log lines prefixed by name."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait


class Prefixed:
    """Write whole lines to a shared log under a lock, each line starting `[name] `."""

    def __init__(self, write: Callable[[str], None], lock: threading.Lock, name: str) -> None:
        self._write, self._lock, self._prefix = write, lock, f"[{name}] "
        self._partial = ""

    def __call__(self, text: str) -> None:
        text = self._partial + text
        head, newline, self._partial = text.rpartition("\n")
        if newline:
            lines = "".join(self._prefix + line for line in (head + newline).splitlines(keepends=True))
            with self._lock:
                self._write(lines)

    def flush(self) -> None:
        if self._partial:
            self("\n")


def side_by_side(jobs: Sequence[Callable[[], None]], *, limit: int, stop: Callable[[], None]) -> None:
    """Run the jobs, `limit` at a time; on the first failure call `stop()` to end the others and raise it."""
    if limit <= 1 or len(jobs) <= 1:
        for job in jobs:
            job()
        return
    with ThreadPoolExecutor(max_workers=min(limit, len(jobs)), thread_name_prefix="service") as pool:
        futures = [pool.submit(job) for job in jobs]
        done, _ = wait(futures, return_when=FIRST_EXCEPTION)
        failed = next((f for f in futures if f in done and f.exception() is not None), None)
        if failed is not None:
            for future in futures:
                future.cancel()
            stop()
        wait(futures)
    if failed is not None:
        raise failed.exception()  # type: ignore[misc]


class Background:
    """Run jobs as they are handed over, `limit` at a time on threads (or at once, in turn, for 1)."""

    def __init__(self, limit: int) -> None:
        self._pool = ThreadPoolExecutor(max_workers=limit, thread_name_prefix="push") if limit > 1 else None
        self._futures: list[Future] = []

    def submit(self, job: Callable[[], None]) -> None:
        if self._pool is None:
            job()
        else:
            self._futures.append(self._pool.submit(job))

    def wait(self, *, raising: bool = True) -> None:
        """Wait for every job handed over; raise the first one's failure (unless not `raising`)."""
        if self._pool is None:
            return
        self._pool.shutdown(wait=True)
        failed = next((f.exception() for f in self._futures if f.exception() is not None), None)
        if failed is not None and raising:
            raise failed


def union(spans: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """The time spans (start, end) merged where they overlap, in order: what some of them covered."""
    merged: list[tuple[float, float]] = []
    for began, ended in sorted(spans):
        if merged and began <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], ended))
        else:
            merged.append((began, ended))
    return merged

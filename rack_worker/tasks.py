"""Celery tasks: each is one call into the domain with IDs as arguments."""

from __future__ import annotations

import os
import threading

from celery import shared_task

from rack.config import load_settings
from rack.context import Rack
from rack.errors import Busy, Unavailable
from rack.pipeline import run

_rack: Rack | None = None
_pid = 0
_lock = threading.Lock()
BUSY_RETRY = 2  # seconds before a build waiting for its webhook's earlier build looks again


def worker_rack() -> Rack:
    """Return this worker process's Rack, made on first use (and anew in a forked child)."""
    global _rack, _pid
    with _lock:
        if _rack is None or _pid != os.getpid():
            _rack, _pid = Rack(load_settings()), os.getpid()
        return _rack


# Unavailable can only escape before the build is claimed (Postgres away), so a retry cannot build twice.
@shared_task(
    name="rack_worker.tasks.run_build",
    bind=True,
    acks_late=True,
    autoretry_for=(Unavailable,),
    retry_backoff=2,
    retry_backoff_max=60,
    max_retries=20,
)
def run_build(self, build_id: str) -> None:
    """Run one build on this worker; one waiting for its webhook's earlier build goes back in the queue."""
    try:
        run.run_build(worker_rack(), build_id, process=f"{self.request.hostname}:{self.request.id}")
    except Busy as exc:  # nothing was claimed; the queue expiry still ends a build that waits too long
        raise self.retry(exc=exc, countdown=BUSY_RETRY, max_retries=None) from None

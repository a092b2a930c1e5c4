"""Celery tasks: each is one call into the domain with IDs as arguments."""

from __future__ import annotations

import os
import threading

from celery import shared_task

from rack import events, external
from rack.config import load_settings
from rack.context import Rack
from rack.errors import BadGateway, Busy, Unavailable
from rack.pipeline import run

# How long a task waits for a slot of a waiting build's app before going back to the end of the queue;
# short enough that a stopping worker is not held long by a task that runs nothing.
PARK = 10.0
_rack: Rack | None = None
_pid = 0
_lock = threading.Lock()
BUSY_RETRY = 2  # seconds before a build waiting for its webhook's earlier build looks again


def worker_rack() -> Rack:
    """Return this worker process's Rack, made on first use (and anew in a forked child)."""
    global _rack, _pid
    with _lock:
        if _rack is None or _pid != os.getpid():
            _rack, _pid = Rack(load_settings(), send_event=_queue_event), os.getpid()
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
    """Run the next build in the fair order (one task is queued per waiting build, `build_id` the one
    that queued it); when every waiting build's app is at its limit, wait a little, then queue again."""
    try:
        run.run_next(worker_rack(), process=f"{self.request.hostname}:{self.request.id}", park=PARK)
    except run.Waiting:
        raise self.retry(countdown=0, max_retries=None) from None
    except Busy as exc:  # nothing was claimed; the queue expiry still ends a build that waits too long
        raise self.retry(exc=exc, countdown=BUSY_RETRY, max_retries=None) from None


def _queue_event(hook_id: str, body: str) -> None:
    deliver_event.delay(hook_id, body)


# A receiver that is down or answers an error is tried again 2, 4, 8 ... s later (at most 10 min apart),
# for about an hour in all; a hook removed meanwhile ends the retries.
@shared_task(
    name="rack_worker.tasks.deliver_event",
    acks_late=True,
    autoretry_for=(BadGateway, Unavailable),
    retry_backoff=2,
    retry_backoff_max=600,
    retry_jitter=False,
    max_retries=10,
)
def deliver_event(hook_id: str, body: str) -> None:
    """POST one event to one hook."""
    events.deliver(worker_rack(), hook_id, body)


# The copy itself ends the build (complete or failed with a reason); a lost worker's import is failed by
# the reaper once its heartbeat stops.
@shared_task(
    name="rack_worker.tasks.import_image", acks_late=True, autoretry_for=(Unavailable,), max_retries=5
)
def import_image(build_id: str, image: str, user: str, password: str) -> None:
    """Copy an image (per service) into an external build."""
    external.run_import(worker_rack(), build_id, image, user, password)

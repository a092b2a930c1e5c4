"""Every worker reaps: a thread that fails lost, expired and overdue builds on a timer (and, less often,
sweeps source contents no recent build needs).

Several workers reaping at once is safe: each build is ended by one guarded UPDATE, so one wins.
"""

from __future__ import annotations

import logging
import threading
import time

from celery import current_app
from celery.signals import worker_ready, worker_shutdown

from rack import metrics
from rack.builds import lifecycle
from rack.config import load_settings
from rack.context import Rack
from rack.pipeline import folders, leftovers
from rack.sources import sweep
from rack_worker import metrics as worker_metrics

log = logging.getLogger(__name__)
_stop = threading.Event()
_servers: list = []


def reap_forever(rack: Rack, stop: threading.Event, *, worker: str = "") -> None:
    """Run the reaper every heartbeat interval until told to stop; outages only delay it.

    Each round also records that this worker is alive (the metrics' worker heartbeats); every
    leftovers.SWEEP_INTERVAL it removes the engine's images of deleted apps.
    """
    next_images = time.monotonic()
    while not stop.wait(rack.settings.heartbeat_interval):
        try:
            if worker:
                metrics.worker_heartbeat(rack, worker)
            lifecycle.reap(rack)
        except Exception:  # Postgres or Redis away: try again next round
            log.warning("reaper round failed", exc_info=True)
        try:
            sweep.sweep_if_due(rack)
        except Exception:
            log.warning("source sweep failed", exc_info=True)
        if time.monotonic() >= next_images:
            next_images = time.monotonic() + leftovers.SWEEP_INTERVAL
            leftovers.sweep_images(rack)  # never raises
            try:
                leftovers.sweep_uploads(rack)
            except Exception:
                log.warning("upload sweep failed", exc_info=True)


@worker_ready.connect
def start_reaper(sender=None, **_kw) -> None:
    app = sender.app if sender is not None else current_app

    def enqueue_build(build_id: str) -> None:  # the reaper queues a lost worker's build again
        app.send_task("rack_worker.tasks.run_build", args=[build_id])

    rack = Rack(load_settings(), enqueue_build=enqueue_build)
    try:  # what a killed worker left on this host's disk
        folders.sweep(rack)
    except Exception:
        log.warning("sweeping build folders failed", exc_info=True)
    worker = getattr(sender, "hostname", "") or ""
    served = worker_metrics.serve(rack)
    if served is not None:
        _servers.append(served)
    threading.Thread(
        target=reap_forever, args=(rack, _stop), kwargs={"worker": worker}, name="rack-reaper", daemon=True
    ).start()


@worker_shutdown.connect
def stop_reaper(**_kw) -> None:
    _stop.set()
    for server in _servers:
        server.shutdown()

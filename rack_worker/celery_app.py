"""Make the Celery app the Flask way: a function, configured from the rack's settings."""

from __future__ import annotations

from celery import Celery

from rack.apps import MAX_BUILD_TIMEOUT
from rack.config import Settings, load_settings


def make_celery(settings: Settings | None = None) -> Celery:
    """Configure Celery for long builds: late acks, one task at a time, JSON only."""
    settings = settings or load_settings()
    app = Celery("rack", broker=settings.celery_broker, include=["rack_worker.tasks"])
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        worker_hijack_root_logger=False,
        broker_connection_retry_on_startup=True,
        broker_transport_options={"visibility_timeout": MAX_BUILD_TIMEOUT + 600},
        # The build watch enforces each build's own timeout (an app's may exceed the rack's); this hard
        # limit only catches a worker stuck past the longest timeout an app may set.
        task_time_limit=MAX_BUILD_TIMEOUT + 600,
    )
    app.conf.rack_settings = settings
    return app

"""Handing builds to workers: the only place the API touches Celery."""

from __future__ import annotations

from collections.abc import Callable

from rack.config import Settings


def enqueue_build_for(settings: Settings) -> Callable[[str], None]:
    """Return a function that enqueues `run_build(build_id)` on the rack's broker."""
    from rack_worker.celery_app import make_celery

    celery = make_celery(settings)

    def enqueue_build(build_id: str) -> None:
        celery.send_task("rack_worker.tasks.run_build", args=[build_id])

    return enqueue_build


def enqueue_import_for(settings: Settings) -> Callable[[str, str, str, str], None]:
    """Return a function that enqueues `import_image(build_id, image, user, password)` on the broker."""
    from rack_worker.celery_app import make_celery

    celery = make_celery(settings)

    def enqueue_import(build_id: str, image: str, user: str, password: str) -> None:
        celery.send_task("rack_worker.tasks.import_image", args=[build_id, image, user, password])

    return enqueue_import


def send_event_for(settings: Settings) -> Callable[[str, str], None]:
    """Return a function that enqueues `deliver_event(hook_id, body)` on the rack's broker."""
    from rack_worker.celery_app import make_celery

    celery = make_celery(settings)

    def send_event(hook_id: str, body: str) -> None:
        celery.send_task("rack_worker.tasks.deliver_event", args=[hook_id, body])

    return send_event

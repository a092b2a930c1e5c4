"""The worker entry point: `celery -A rack_worker.worker worker`."""

from rack_worker import reaper  # noqa: F401  (connects the reaper to the worker's start)
from rack_worker.celery_app import make_celery

app = make_celery()

"""The worker entry point: `celery -A rack_worker.worker worker`."""

from celery.signals import setup_logging

from rack import logconfig
from rack_worker import reaper  # noqa: F401  (connects the reaper to the worker's start)
from rack_worker.celery_app import make_celery

app = make_celery()


@setup_logging.connect
def _configure_logging(loglevel=None, **_kw) -> None:
    """The rack's log format for Celery's lines too (connecting here stops Celery configuring its own)."""
    logconfig.configure(app.conf.rack_settings.log_format, level=loglevel or "INFO")

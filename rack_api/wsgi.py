"""The WSGI entry point: `gunicorn rack_api.wsgi:app`."""

from rack_api import create_app

app = create_app()

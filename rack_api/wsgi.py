"""The WSGI entry point: `gunicorn rack_api.wsgi:app`."""

from rack import logconfig
from rack.config import load_settings
from rack_api import create_app

settings = load_settings()
logconfig.configure(settings.log_format)
app = create_app(settings)

"""The web console at /console: apps, builds with their phases and live logs, releases, for a browser.

Server-rendered Jinja pages; the only script is static/console.js (the live log over the API's own log
websocket). A person signs in with the rack password and gets a signed session cookie (HttpOnly,
SameSite=Strict, Secure over TLS); every form carries a CSRF token in `csrf_token`. Like the rest of the
API, each view makes one call into `rack` (mostly `rack.overview`).
"""

from __future__ import annotations

from flask import Flask

from rack_api.console import session, views


def init_app(app: Flask) -> None:
    session.init_app(app)
    app.register_blueprint(views.bp)

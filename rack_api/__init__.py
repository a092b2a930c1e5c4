"""The rack's HTTP API: a thin Flask layer over the `rack` domain."""

from __future__ import annotations

from flask import Flask

from rack.config import Settings, load_settings
from rack.context import Rack, no_events, no_queue


def create_app(settings: Settings | None = None, *, rack: Rack | None = None) -> Flask:
    """Make the API app; nothing connects to a backing service until a request needs it."""
    from rack_api import (
        apps,
        auth,
        builds,
        console,
        errors,
        events,
        exports,
        logs,
        metrics,
        objects,
        queue,
        releases,
        sources,
        system,
        webhooks,
    )

    app = Flask(__name__, static_folder=None)
    app.wsgi_app = _collapse_slashes(app.wsgi_app)  # type: ignore[method-assign]
    if rack is None:
        rack = Rack(settings or load_settings())
    if rack.enqueue_build is no_queue:
        rack.enqueue_build = queue.enqueue_build_for(rack.settings)
    if rack.enqueue_import is no_queue:
        rack.enqueue_import = queue.enqueue_import_for(rack.settings)
    if rack.send_event is no_events:
        rack.send_event = queue.send_event_for(rack.settings)
    app.extensions["rack"] = rack

    errors.init_app(app)
    auth.init_app(app)
    system.init_app(app)
    apps.init_app(app)
    objects.init_app(app)
    builds.init_app(app)
    exports.init_app(app)
    logs.init_app(app)
    releases.init_app(app)
    sources.init_app(app)
    webhooks.init_app(app)
    events.init_app(app)
    console.init_app(app)
    metrics.init_app(app)
    return app


def _collapse_slashes(wsgi_app):
    """Tolerate `//` in paths: Convox's builder asks for `objects//tmp/x.tgz`."""

    def middleware(environ, start_response):
        path = environ.get("PATH_INFO", "")
        while "//" in path:
            path = path.replace("//", "/")
        environ["PATH_INFO"] = path
        return wsgi_app(environ, start_response)

    return middleware

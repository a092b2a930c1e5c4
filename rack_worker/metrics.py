"""Each worker serves `/metrics` on RACK_METRICS_PORT (off when 0), behind RACK_METRICS_TOKEN if set."""

from __future__ import annotations

import hmac
import logging
import threading
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from rack import metrics
from rack.context import Rack

log = logging.getLogger(__name__)


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args) -> None:  # noqa: A002  (wsgiref's signature)
        return None


def wsgi_app(rack: Rack):
    """Return a WSGI app answering GET /metrics (and 404 otherwise), checking the token if one is set."""
    registry = metrics.registry_for(rack)
    token = rack.settings.metrics_token

    def app(environ, start_response):
        if environ.get("PATH_INFO") != "/metrics":
            start_response("404 Not Found", [("Content-Type", "text/plain")])
            return [b"not found: try /metrics\n"]
        given = environ.get("HTTP_AUTHORIZATION", "").removeprefix("Bearer ")
        if token and not hmac.compare_digest(given.encode(), token.encode()):
            start_response("401 Unauthorized", [("Content-Type", "text/plain")])
            return [b"invalid authentication: send Authorization: Bearer <RACK_METRICS_TOKEN>\n"]
        body = metrics.render(registry)
        start_response("200 OK", [("Content-Type", metrics.CONTENT_TYPE), ("Content-Length", str(len(body)))])
        return [body]

    return app


def serve(rack: Rack, *, host: str = "0.0.0.0") -> WSGIServer | None:
    """Start serving /metrics on the settings' port in a thread; None when the port is 0 or taken."""
    port = rack.settings.metrics_port
    if not port:
        return None
    try:
        server = make_server(host, port, wsgi_app(rack), handler_class=_Quiet)
    except OSError as exc:  # the worker still builds; its numbers are the same on any other process
        log.warning("metrics not served on port %d: %s", port, exc)
        return None
    threading.Thread(target=server.serve_forever, name="rack-metrics", daemon=True).start()
    log.info("metrics on http://%s:%d/metrics", host, server.server_port)
    return server

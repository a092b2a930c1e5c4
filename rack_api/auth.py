"""HTTP Basic auth: any username, the rack password, compared in constant time."""

from __future__ import annotations

import hmac
import re

from flask import Flask, request

from rack_api.console import session as console_session
from rack_api.errors import error_response
from rack_api.params import rack

OPEN = {"/check"}
METRICS = "/metrics"  # also answers a Bearer RACK_METRICS_TOKEN, so Prometheus need not hold the password
WEBHOOK_DELIVERY = re.compile(r"/webhooks/[^/]+")  # POSTs here are signed instead (rack.webhooks.verify)
CONSOLE = re.compile(r"/console(/.*)?")  # the console signs people in itself (rack_api.console.session)
# A build's log, which the console's pages read over the websocket with their session cookie.
LOGS = re.compile(r"/apps/[^/]+/builds/[^/]+/logs")


def init_app(app: Flask) -> None:
    @app.before_request
    def authenticate():
        if request.path in OPEN:
            return None
        if request.method == "POST" and WEBHOOK_DELIVERY.fullmatch(request.path):
            return None
        if CONSOLE.fullmatch(request.path):
            return None
        if request.method == "GET" and LOGS.fullmatch(request.path) and console_session.reads_logs():
            return None
        auth = request.authorization
        token = rack().settings.metrics_token
        if request.path == METRICS and token and auth and auth.type == "bearer":
            if hmac.compare_digest((auth.token or "").encode(), token.encode()):
                return None
        password = rack().settings.password
        given = (auth.password or "") if auth and auth.type == "basic" else ""
        if hmac.compare_digest(given.encode(), password.encode()):
            return None
        body, status, headers = error_response("invalid authentication", 401)
        headers["WWW-Authenticate"] = 'Basic realm="convox"'
        return body, status, headers

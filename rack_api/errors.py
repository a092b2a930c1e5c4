"""One error handler: domain errors and backend outages become JSON errors with the right status."""

from __future__ import annotations

import logging

import psycopg2
import redis
from flask import Flask, json, request
from werkzeug.exceptions import HTTPException

from rack.errors import RackError

log = logging.getLogger(__name__)


def error_response(message: str, status: int):
    """`{"error": …}` when the request accepts JSON (no Accept, or `*/*`, counts), plain text otherwise."""
    if request and request.accept_mimetypes.best_match(["application/json", "text/plain"]) == "text/plain":
        return message + "\n", status, {"Content-Type": "text/plain; charset=utf-8"}
    body = json.dumps({"error": message}) + "\n"
    return body, status, {"Content-Type": "application/json"}


def init_app(app: Flask) -> None:
    @app.errorhandler(RackError)
    def rack_error(exc: RackError):
        body, status, headers = error_response(exc.message, exc.status)
        if retry_after := getattr(exc, "retry_after", None):
            headers["Retry-After"] = str(retry_after)
        return body, status, headers

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException):
        return error_response(exc.description or exc.name, exc.code or 500)

    @app.errorhandler(psycopg2.OperationalError)
    @app.errorhandler(psycopg2.InterfaceError)
    def database_down(exc):
        return error_response("the database is unreachable; try again shortly", 503)

    @app.errorhandler(redis.ConnectionError)
    @app.errorhandler(redis.TimeoutError)
    def redis_down(exc):
        return error_response("the log and queue store (Redis) is unreachable; try again shortly", 503)

    @app.errorhandler(Exception)
    def unexpected(exc: Exception):
        log.exception("unexpected error")
        return error_response("internal error: the rack logged the details", 500)

    @app.after_request
    def headers(response):
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("X-Frame-Options", "DENY")
        return response

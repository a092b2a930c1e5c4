"""Reading Convox-style request parameters: form body, query string, or a header of the same name."""

from __future__ import annotations

import contextlib

from flask import Response, current_app, json, request
from werkzeug.exceptions import ClientDisconnected

from rack.context import Rack
from rack.errors import Invalid, RackError, TooLarge


def rack() -> Rack:
    return current_app.extensions["rack"]


def param(name: str, default: str | None = None, *, header: bool = False) -> str | None:
    """A parameter from the form body or query string (and, if asked, a header)."""
    value = _form().get(name)
    if value is None:
        value = request.args.get(name)
    if value is None and header:
        value = request.headers.get(name)
    if value is not None and "\x00" in value:  # Postgres text cannot hold it: a 400, not a 500 later
        raise Invalid(f"parameter {name!r} must not contain a NUL byte")
    return default if value is None else value


def _form():
    """The request's form, read up to the rack's limit (413 past it, sized or chunked)."""
    limit = rack().settings.form_max_bytes
    if request.content_length is not None and request.content_length > limit:
        raise TooLarge(
            f"the request's form of {request.content_length} bytes is larger than the limit of {limit}"
        )
    request.max_content_length = limit  # a chunked form is cut off at the limit as it is read
    return request.form


def flag(name: str) -> bool:
    """A boolean parameter: true only when it is exactly `true`, as Convox reads it."""
    return param(name) == "true"


def listing(name: str) -> list[str]:
    """A list parameter, comma-joined on the wire."""
    value = param(name)
    return [v for v in value.split(",") if v] if value else []


def limit(default: int = 10, maximum: int = 1000) -> int:
    raw = param("limit")
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise Invalid(f"limit must be a whole number, got {raw!r}") from None
    if value < 1 or value > maximum:
        raise Invalid(f"limit must be between 1 and {maximum}, got {value}")
    return value


def as_json(value, status: int = 200) -> Response:
    """JSON indented as Convox sends it."""
    body = json.dumps(value, indent=2, sort_keys=False) + "\n"
    return Response(body, status=status, mimetype="application/json")


def ok() -> Response:
    return Response("ok\n", mimetype="text/plain")


class RequestBody:
    """The raw request body, sized or chunked, read in chunks; ending before its Content-Length is an error.

    `what` names the body in messages ("upload", "import").
    """

    def __init__(self, what: str, *, limit: int) -> None:
        self.what, self.limit = what, limit
        self.stream, self.length, self.seen = request.stream, request.content_length, 0
        if self.length is not None and self.length > limit:
            raise TooLarge(f"the {what} of {self.length} bytes is larger than the limit of {limit} bytes")

    def read(self, size: int = 1024 * 1024) -> bytes:
        try:
            chunk = self.stream.read(size)
        except ClientDisconnected:
            chunk = b""
        except (OSError, ValueError) as exc:  # a chunked body cut short or malformed, a reset connection
            raise Invalid(
                f"the {self.what} was cut short or malformed after {self.seen} bytes: {exc}"
            ) from None
        self.seen += len(chunk)
        if not chunk and self.length is not None and self.seen < self.length:
            raise Invalid(f"the {self.what} is truncated: got {self.seen} of {self.length} bytes")
        return chunk

    def read_all(self) -> bytes:
        """The whole body, which must fit within the limit (a small JSON document, not an upload)."""
        chunks, size = [], 0
        while chunk := self.read():
            size += len(chunk)
            if size > self.limit:
                raise TooLarge(f"the {self.what} is larger than the limit of {self.limit} bytes")
            chunks.append(chunk)
        return b"".join(chunks)

    def drain(self) -> None:
        """Read what the client still sends (up to the limit), so it reads our answer instead of a reset."""
        with contextlib.suppress(RackError, OSError):
            while self.seen <= self.limit and self.read():
                pass

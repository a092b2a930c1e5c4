"""Build export and import: `GET /apps/{app}/builds/{id}.tgz` and `POST /apps/{app}/builds/import`."""

from __future__ import annotations

import contextlib

from flask import Blueprint, Flask, Response, request
from werkzeug.exceptions import ClientDisconnected

from rack import builds, exports
from rack.errors import Invalid, RackError, TooLarge
from rack_api.params import as_json, rack

bp = Blueprint("exports", __name__)
CHUNK = 1024 * 1024


@bp.get("/apps/<app>/builds/<build_id>.tgz")
def export(app: str, build_id: str):
    stream = exports.export(rack(), app, build_id)
    headers = {
        "Content-Disposition": f'attachment; filename="{build_id}.tgz"',
        "Cache-Control": "no-store",
        "X-Accel-Buffering": "no",  # a proxy passes the archive on as it is made
    }
    return Response(stream, mimetype="application/octet-stream", headers=headers)


class _Body:
    """Read the request body (sized or chunked); a client gone before its Content-Length is a cut import."""

    def __init__(self, stream, length: int | None) -> None:
        self.stream, self.length, self.seen = stream, length, 0

    def read(self, size: int = CHUNK) -> bytes:
        try:
            chunk = self.stream.read(size)
        except ClientDisconnected:
            chunk = b""
        self.seen += len(chunk)
        if not chunk and self.length is not None and self.seen < self.length:
            raise Invalid(f"the import is truncated: got {self.seen} of {self.length} bytes")
        return chunk

    def drain(self, limit: int) -> None:
        """Read what the client still sends (up to `limit`), so it reads our answer instead of a reset."""
        with contextlib.suppress(RackError, OSError):
            while self.seen <= limit and self.read(CHUNK):
                pass


@bp.post("/apps/<app>/builds/import")
def import_build(app: str):
    length = request.content_length
    limit = rack().settings.max_upload_bytes
    if length is not None and length > limit:
        raise TooLarge(f"the import of {length} bytes is larger than the limit of {limit} bytes")
    body = _Body(request.stream, length)
    try:
        row = exports.import_build(rack(), app, body)
    except RackError as exc:
        if not isinstance(exc, TooLarge):
            body.drain(limit)
        raise
    return as_json(builds.serialize(row))


def init_app(app: Flask) -> None:
    app.register_blueprint(bp)

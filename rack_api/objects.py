"""Objects: `POST|GET|HEAD|DELETE /apps/{app}/objects/{key}`; uploads stream, never buffered whole."""

from __future__ import annotations

from flask import Blueprint, Flask, Response, request, stream_with_context
from werkzeug.exceptions import ClientDisconnected

from rack import objects
from rack.errors import Invalid, TooLarge
from rack_api.params import as_json, ok, rack

bp = Blueprint("objects", __name__)


class _ExactBody:
    """Read the request body and fail if it ends before its Content-Length (a dropped upload)."""

    def __init__(self, stream, length: int | None) -> None:
        self.stream, self.length, self.seen = stream, length, 0

    def read(self, size: int = -1) -> bytes:
        try:
            chunk = self.stream.read(size)
        except ClientDisconnected:
            chunk = b""
        self.seen += len(chunk)
        if not chunk and self.length is not None and self.seen < self.length:
            raise Invalid(f"upload truncated: got {self.seen} of {self.length} bytes")
        return chunk


@bp.post("/apps/<app>/objects/", defaults={"key": ""})
@bp.post("/apps/<app>/objects/<path:key>")
def store(app: str, key: str):
    length = request.content_length
    limit = rack().settings.max_upload_bytes
    if length is not None and length > limit:
        raise TooLarge(f"upload of {length} bytes is larger than the limit of {limit} bytes")
    url = objects.put(rack(), app, key, _ExactBody(request.stream, length))
    return as_json({"Url": url})


@bp.route("/apps/<app>/objects/<path:key>", methods=["HEAD"])
def exists(app: str, key: str):
    return ("", 200) if objects.exists(rack(), app, key) else ("", 404)


@bp.get("/apps/<app>/objects/<path:key>")
def fetch(app: str, key: str):
    fh = objects.open_object(rack(), app, key)

    def chunks():
        with fh:
            while chunk := fh.read(1024 * 1024):
                yield chunk

    return Response(stream_with_context(chunks()), mimetype="application/octet-stream")


@bp.delete("/apps/<app>/objects/<path:key>")
def delete(app: str, key: str):
    objects.delete(rack(), app, key)
    return ok()


def init_app(app: Flask) -> None:
    app.register_blueprint(bp)

"""Objects: `POST|GET|HEAD|DELETE /apps/{app}/objects/{key}`; uploads stream, never buffered whole."""

from __future__ import annotations

from typing import BinaryIO, cast

from flask import Blueprint, Flask, Response, stream_with_context

from rack import objects
from rack_api.params import RequestBody, as_json, ok, param, rack

bp = Blueprint("objects", __name__)


@bp.post("/apps/<app>/objects/", defaults={"key": ""})
@bp.post("/apps/<app>/objects/<path:key>")
def store(app: str, key: str):
    body = RequestBody("upload", limit=rack().settings.max_upload_bytes)
    url = objects.put(rack(), app, key, cast(BinaryIO, body))
    return as_json({"Url": url})


@bp.get("/apps/<app>/objects")
def index(app: str):
    return as_json(objects.list_keys(rack(), app, prefix=param("prefix") or ""))


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

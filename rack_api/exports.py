"""Build export and import: `GET /apps/{app}/builds/{id}.tgz` and `POST /apps/{app}/builds/import`."""

from __future__ import annotations

from typing import BinaryIO, cast

from flask import Blueprint, Flask, Response

from rack import exports
from rack.builds import record as builds
from rack.errors import RackError, TooLarge
from rack_api.params import RequestBody, as_json, rack

bp = Blueprint("exports", __name__)


@bp.get("/apps/<app>/builds/<build_id>.tgz")
def export(app: str, build_id: str):
    stream = exports.export(rack(), app, build_id)
    headers = {
        "Content-Disposition": f'attachment; filename="{build_id}.tgz"',
        "Cache-Control": "no-store",
        "X-Accel-Buffering": "no",  # a proxy passes the archive on as it is made
    }
    return Response(stream, mimetype="application/octet-stream", headers=headers)


@bp.post("/apps/<app>/builds/import")
def import_build(app: str):
    body = RequestBody("import", limit=rack().settings.max_upload_bytes)
    try:
        row = exports.import_build(rack(), app, cast(BinaryIO, body))
    except RackError as exc:
        if not isinstance(exc, TooLarge):
            body.drain()
        raise
    return as_json(builds.serialize(row))


def init_app(app: Flask) -> None:
    app.register_blueprint(bp)

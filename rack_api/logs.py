"""Build logs: `GET /apps/{app}/builds/{id}/logs` (the stored log for now)."""

from __future__ import annotations

from flask import Blueprint, Flask, Response

from rack import builds, objects
from rack_api.params import rack

bp = Blueprint("logs", __name__)


@bp.get("/apps/<app>/builds/<build_id>/logs")
def logs(app: str, build_id: str):
    row = builds.get(rack(), app, build_id)
    if not row["logs"]:
        return Response("", mimetype="text/plain")
    _, key = objects.parse_url(row["logs"])
    with objects.open_object(rack(), app, key) as fh:
        return Response(fh.read(), mimetype="text/plain")


def init_app(app: Flask) -> None:
    app.register_blueprint(bp)

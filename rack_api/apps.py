"""Apps: `POST/GET /apps`, `GET/DELETE /apps/{app}`."""

from __future__ import annotations

from flask import Blueprint, Flask, request

from rack import apps
from rack_api.params import as_json, ok, param, rack

bp = Blueprint("apps", __name__)


@bp.post("/apps")
def create():
    row = apps.create(
        rack(),
        name=param("name", "", header=True),
        generation=param("generation", "2"),
        timeout=param("timeout"),
    )
    return as_json(apps.serialize(row))


@bp.get("/apps")
def index():
    return as_json([apps.serialize(r) for r in apps.list_all(rack())])


@bp.get("/apps/<app>")
def show(app: str):
    return as_json(apps.serialize(apps.get(rack(), app)))


@bp.put("/apps/<app>")
def update(app: str):
    unknown = sorted((set(request.form) | set(request.args)) - {"lock", "parameters", "timeout"})
    lock = param("lock")
    row = apps.update(
        rack(), app, timeout=param("timeout"), parameters=param("parameters"),
        lock=None if lock is None else lock == "true", unknown=unknown,
    )  # fmt: skip
    return as_json(apps.serialize(row))


@bp.delete("/apps/<app>")
def delete(app: str):
    apps.delete(rack(), app)
    return ok()


def init_app(app: Flask) -> None:
    app.register_blueprint(bp)

"""Releases: create, list, show, promote; and the environment that makes releases."""

from __future__ import annotations

from flask import Blueprint, Flask

from rack import releases
from rack_api.params import as_json, flag, limit, ok, param, rack

bp = Blueprint("releases", __name__)


@bp.post("/apps/<app>/releases")
def create(app: str):
    row = releases.create(
        rack(),
        app,
        build=param("build") or None,
        env=param("env"),
        description=param("description") or None,
        parent=param("parent-release") or None,
    )
    return as_json(releases.serialize(row))


@bp.get("/apps/<app>/releases")
def index(app: str):
    rows = releases.list_for_app(rack(), app, limit=limit())
    return as_json([releases.serialize(r) for r in rows])


@bp.get("/apps/<app>/releases/<release_id>")
def show(app: str, release_id: str):
    return as_json(releases.serialize(releases.get(rack(), app, release_id)))


@bp.post("/apps/<app>/releases/<release_id>/promote")
def promote(app: str, release_id: str):
    releases.promote(rack(), app, release_id, rollback=flag("rollback"))
    return ok()


@bp.post("/apps/<app>/releases/<release_id>/rollback")
def rollback(app: str, release_id: str):
    return as_json(releases.serialize(releases.rollback(rack(), app, release_id)))


def init_app(app: Flask) -> None:
    app.register_blueprint(bp)

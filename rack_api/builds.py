"""Builds: create, list, show, update, cancel."""

from __future__ import annotations

from flask import Blueprint, Flask

from rack.builds import lifecycle
from rack.builds import record as builds
from rack_api.params import as_json, flag, limit, listing, param, rack

bp = Blueprint("builds", __name__)


@bp.post("/apps/<app>/builds")
def create(app: str):
    row = builds.create(
        rack(),
        app,
        url=param("url", header=True) or "",
        build_args=listing("build-args"),
        description=param("description") or "",
        manifest=param("manifest") or "",
        no_cache=flag("no-cache"),
        development=flag("development"),
        git_sha=param("git-sha") or "",
    )
    return as_json(builds.serialize(row))


@bp.get("/apps/<app>/builds")
def index(app: str):
    rows = builds.list_for_app(rack(), app, limit=limit())
    return as_json([builds.serialize(r) for r in rows])


@bp.get("/apps/<app>/builds/<build_id>")
def show(app: str, build_id: str):
    return as_json(builds.serialize(builds.get(rack(), app, build_id)))


@bp.put("/apps/<app>/builds/<build_id>")
def update(app: str, build_id: str):
    names = ("ended", "entrypoint", "logs", "manifest", "release", "started", "status", "description")
    changes = {name: value for name in names if (value := param(name)) is not None}
    return as_json(builds.serialize(builds.update(rack(), app, build_id, changes)))


@bp.post("/apps/<app>/builds/<build_id>/cancel")
def cancel(app: str, build_id: str):
    return as_json(builds.serialize(lifecycle.cancel(rack(), app, build_id)))


def init_app(app: Flask) -> None:
    app.register_blueprint(bp)

"""Builds: create, list, show, update, cancel."""

from __future__ import annotations

from flask import Blueprint, Flask

from rack import external
from rack.builds import lifecycle
from rack.builds import record as builds
from rack_api.params import as_json, flag, limit, listing, param, rack

bp = Blueprint("builds", __name__)


@bp.post("/apps/<app>/builds")
def create(app: str):
    if flag("external"):  # the client builds and pushes; the answer alone shows the push credentials
        row = external.create(
            rack(), app, description=param("description") or "", manifest=param("manifest") or "",
            git_sha=param("git-sha") or "",
        )  # fmt: skip
        return as_json(
            {**builds.serialize(row), "repository": external.repository(rack(), app, with_credentials=True)}
        )
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


@bp.post("/apps/<app>/builds/<build_id>/image")
def import_image(app: str, build_id: str):
    external.start_import(
        rack(), app, build_id, image=param("image", header=True) or "",
        user=param("src-creds-user") or "", password=param("src-creds-pass") or "",
    )  # fmt: skip
    return "", 202


@bp.post("/apps/<app>/builds/<build_id>/cancel")
def cancel(app: str, build_id: str):
    return as_json(builds.serialize(lifecycle.cancel(rack(), app, build_id)))


def init_app(app: Flask) -> None:
    app.register_blueprint(bp)

"""Content-addressed sources: `POST /apps/{app}/sources` (a tree: what is missing, or its manifest:// URL)
and `POST /apps/{app}/contents` (a tar batch of contents named by their sha256)."""

from __future__ import annotations

from typing import BinaryIO, cast

from flask import Blueprint, Flask

from rack.sources import contents, tree
from rack_api.params import RequestBody, as_json, rack

bp = Blueprint("sources", __name__)


@bp.post("/apps/<app>/sources")
def create(app: str):
    body = RequestBody("source tree", limit=tree.MAX_TREE_BYTES)
    return as_json(contents.create_tree(rack(), app, body.read_all()))


@bp.post("/apps/<app>/contents")
def upload(app: str):
    body = RequestBody("contents upload", limit=rack().settings.max_upload_bytes)
    return as_json(contents.receive(rack(), app, cast(BinaryIO, body)))


def init_app(app: Flask) -> None:
    app.register_blueprint(bp)

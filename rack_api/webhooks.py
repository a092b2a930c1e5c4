"""Push webhooks: add, list and delete them per app; receive deliveries at `/webhooks/<id>`."""

from __future__ import annotations

from flask import Blueprint, Flask, request

from rack import webhooks
from rack.errors import TooLarge
from rack_api.params import as_json, flag, ok, param, rack

bp = Blueprint("webhooks", __name__)
_CHUNK = 64 * 1024


@bp.post("/apps/<app>/webhooks")
def create(app: str):
    row = webhooks.create(
        rack(), app, repo=param("repo") or "", branch=param("branch") or "main", promote=flag("promote")
    )
    return as_json(webhooks.serialize(row, secret=True))


@bp.get("/apps/<app>/webhooks")
def index(app: str):
    return as_json([webhooks.serialize(row) for row in webhooks.list_for_app(rack(), app)])


@bp.delete("/apps/<app>/webhooks/<webhook_id>")
def delete(app: str, webhook_id: str):
    webhooks.delete(rack(), app, webhook_id)
    return ok()


@bp.post("/webhooks/<webhook_id>")
def deliver(webhook_id: str):
    """Take a push delivery; it carries no rack password, only its signature (see rack_api.auth)."""
    status, body = webhooks.deliver(rack(), webhook_id, body=_body(), headers=dict(request.headers))
    return as_json(body, status)


def _body() -> bytes:
    """Read the raw body, one byte past the limit at most, so an oversized delivery costs no memory."""
    limit = webhooks.MAX_BODY
    if request.content_length is not None and request.content_length > limit:
        raise TooLarge(f"the delivery is larger than {limit} bytes")
    chunks, size = [], 0
    while size <= limit:
        chunk = request.stream.read(min(_CHUNK, limit + 1 - size))
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


def init_app(app: Flask) -> None:
    app.register_blueprint(bp)

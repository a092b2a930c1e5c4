"""Outbound event webhooks: `GET/POST /events/webhooks`, `DELETE /events/webhooks/{id}` (`app`: one app's)."""

from __future__ import annotations

from flask import Blueprint, Flask

from rack import events
from rack_api.params import as_json, ok, param, rack

bp = Blueprint("events", __name__)


@bp.post("/events/webhooks")
def add():
    row = events.add(rack(), param("url") or "", app=param("app") or None)
    return as_json(events.serialize(row, secret=True))


@bp.get("/events/webhooks")
def index():
    return as_json([events.serialize(r) for r in events.list_hooks(rack(), app=param("app") or None)])


@bp.delete("/events/webhooks/<hook_id>")
def remove(hook_id: str):
    events.remove(rack(), hook_id, app=param("app") or None)
    return ok()


@bp.post("/events")
def send():
    """Convox's `EventSend`: form `action`, `data` (a form-encoded map), `error`; sent to the hooks."""
    events.send(rack(), param("action") or "", data=param("data") or "", error=param("error") or "")
    return ok()


def init_app(app: Flask) -> None:
    app.register_blueprint(bp)

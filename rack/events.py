"""Outbound events, as Convox sends them: JSON POSTed to the URLs added with `convox rack webhooks add`.

The body is `{"action", "status": "success"|"error", "data": {..., "app", "rack", "message"?}, "timestamp"}`,
signed `Convox-Signature: t=<unix time>,v1=<hex HMAC-SHA256 of "<t>.<body>" with the hook's secret>`.
Emitting only hands each delivery to the queue (`rack.send_event`): a slow or failing receiver never delays
a build, and the delivery task retries with backoff.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import re
import secrets
import time
from datetime import UTC, datetime
from urllib.parse import parse_qsl, urlsplit

from rack import __version__, apps
from rack.context import Rack
from rack.errors import BadGateway, Invalid, NotFound
from rack.ids import check_id, new_id
from rack.scrub import scrub
from rack.sql import events as sql
from rack.timefmt import rfc3339

log = logging.getLogger(__name__)
ACTIONS = ("build:create", "build:complete", "build:fail", "release:create", "release:promote")
URL_MAX = 2000
TIMEOUT = (5, 15)  # connect, read: a receiver has 15 s to answer one delivery


def serialize(row: dict, *, secret: bool = False) -> dict:
    out = {
        "id": row["id"],
        "app": row["app"] or "",
        "url": scrub(row["url"]),
        "created": rfc3339(row["created"]),
    }
    if secret:
        out["secret"] = row["secret"]
    return out


def check_url(url: str) -> str:
    url = (url or "").strip()
    if not url:
        raise Invalid("url is required: the address to POST events to, like https://example.com/hooks")
    if len(url) > URL_MAX or any(ch.isspace() or not ch.isprintable() for ch in url):
        raise Invalid(f"url must be printable, without spaces, at most {URL_MAX} characters")
    parts = urlsplit(url)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise Invalid(f"url {scrub(url)!r} is not supported: use http(s)://host/path")
    return url


def add(rack: Rack, url: str, *, app: str | None = None) -> dict:
    """Add a hook for the rack's events (or one app's) with a new secret; the row holds that secret."""
    url = check_url(url)
    with rack.db.transaction() as conn:
        if app is not None:
            apps.get(rack, app, conn)
        return sql.insert(conn, id=new_id("H"), app=app, url=url, secret=secrets.token_hex(32))


def list_hooks(rack: Rack, *, app: str | None = None) -> list[dict]:
    with rack.db.transaction() as conn:
        if app is not None:
            apps.get(rack, app, conn)
        return sql.list_for(conn, app=app)


def remove(rack: Rack, hook_id: str, *, app: str | None = None) -> None:
    check_id("hook", hook_id)
    with rack.db.transaction() as conn:
        if app is not None:
            apps.get(rack, app, conn)
        if not sql.delete(conn, id=hook_id, app=app):
            raise NotFound(f"hook not found: {hook_id}")


def emit(rack: Rack, action: str, *, app: str, data: dict, error: str = "") -> None:
    """Queue `action` for every hook of the rack and of the app; never raises (an event is not a build)."""
    try:
        with rack.db.transaction() as conn:
            hooks = sql.receiving(conn, app=app)
        if not hooks:
            return
        payload = {
            "action": action,
            "status": "error" if error else "success",
            "data": {**data, "app": app, "rack": rack.settings.name, **({"message": error} if error else {})},
            "timestamp": rfc3339(datetime.now(UTC)),
        }
        body = json.dumps(payload, sort_keys=True)
        for hook in hooks:
            rack.send_event(hook["id"], body)
    except Exception:
        log.exception("event %s of app %s could not be queued", action, app)


def send(rack: Rack, action: str, *, data: str, error: str = "") -> None:
    """An event a client sends (Convox's `POST /events`): `data` is a form-encoded map naming its `app`."""
    if not re.fullmatch(r"[a-z][a-z0-9-]{0,40}(:[a-z][a-z0-9-]{0,40}){1,3}", action or ""):
        raise Invalid(f"action {action[:100]!r} is not an event name like build:create")
    try:
        fields = dict(parse_qsl(data, keep_blank_values=True, strict_parsing=bool(data), max_num_fields=50))
    except ValueError:
        raise Invalid("data is not a form-encoded map (key=value&...)") from None
    if len(data) > 64 * 1024 or len(error) > 64 * 1024:
        raise Invalid("data and error must be at most 64 KiB each")
    app = fields.pop("app", "")
    apps.get(rack, app)
    emit(rack, action, app=app, data=fields, error=error)


def signature(secret: str, body: str, *, at: int) -> str:
    """Convox's `Convox-Signature` value: `t=<unix time>,v1=<hex HMAC-SHA256 of "<t>.<body>">`."""
    mac = hmac.new(secret.encode(), f"{at}.{body}".encode(), hashlib.sha256).hexdigest()
    return f"t={at},v1={mac}"


def deliver(rack: Rack, hook_id: str, body: str) -> bool:
    """POST one event to its hook, signed now; False when the hook is gone, BadGateway when it fails."""
    import requests

    with rack.db.transaction() as conn:
        hook = sql.get(conn, id=hook_id)
    if hook is None:
        return False
    headers = {
        "Content-Type": "application/json",
        "User-Agent": f"rack-events/{__version__}",
        "Convox-Signature": signature(hook["secret"], body, at=int(time.time())),
    }
    try:
        resp = requests.post(hook["url"], data=body.encode(), headers=headers, timeout=TIMEOUT)
    except requests.RequestException as exc:
        raise BadGateway(f"event to {scrub(hook['url'])} failed: {type(exc).__name__}") from None
    if resp.status_code >= 300:
        raise BadGateway(f"event to {scrub(hook['url'])} was answered {resp.status_code}")
    return True


def build_ended(rack: Rack, row: dict | None, *, promoted: bool = False) -> None:
    """Send a build's outcome: build:complete (and release:create, release:promote) or build:fail."""
    if row is None:
        return
    data = {"id": row["id"]}
    if row["status"] == "complete":
        emit(rack, "build:complete", app=row["app"], data={**data, "release_id": row["release"]})
        if row["release"]:  # an external build's release is made afterwards, by its client
            emit(rack, "release:create", app=row["app"], data={"id": row["release"], "build_id": row["id"]})
        if promoted:
            emit(rack, "release:promote", app=row["app"], data={"id": row["release"]})
    elif row["status"] == "failed":
        emit(rack, "build:fail", app=row["app"], data=data, error=row["reason"] or "the build failed")

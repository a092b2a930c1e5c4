"""What workers remove now and then: their engine's images of deleted apps; uploads no build will use.

Deleting an app removes its images from the registry at once (`rack.apps.delete`); each engine keeps its
own copies (tagged `<registry>/<app>:…`) until its worker's next sweep, at start-up and every
SWEEP_INTERVAL seconds. An upload under an app's `tmp/` that no waiting or running build names is
deleted once it has been seen so for UPLOAD_GRACE seconds (a finished build's own source is deleted when
it ends; this catches uploads never built and sources left by builds ended elsewhere). Build folders are
swept by `rack.pipeline.folders.sweep`.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import docker
import docker.errors

from rack.context import Rack
from rack.db import fetchall
from rack.pipeline.engine.stream import TRANSPORT

log = logging.getLogger(__name__)
SWEEP_INTERVAL = 600
UPLOAD_GRACE = 3600
_SEEN = "rack:orphan-uploads"  # Redis hash: store key -> when a sweep first found nothing naming it


def sweep_images(rack: Rack) -> list[str]:
    """Remove this engine's image tags of apps that are gone; return the tags removed."""
    prefix = f"{rack.settings.registry}/"
    client = docker.APIClient(base_url=rack.settings.docker_host, timeout=60)
    removed: list[str] = []
    try:
        tags = [
            tag
            for image in client.images(filters={"reference": f"{prefix}*"})
            for tag in image.get("RepoTags") or []
            if tag.startswith(prefix)
        ]
        if not tags:
            return removed
        with rack.db.transaction() as conn:
            known = {row["name"] for row in fetchall(conn, "SELECT name FROM apps")}
        for tag in tags:
            app = tag[len(prefix) :].rsplit(":", 1)[0]
            if app in known:
                continue
            try:
                client.remove_image(tag)
                removed.append(tag)
            except docker.errors.APIError as exc:  # still used by a container: next time
                log.info("image %s of a deleted app stays for now: %s", tag, exc)
    except (docker.errors.DockerException, *TRANSPORT):
        log.warning("sweeping the engine's images failed", exc_info=True)
    finally:
        client.close()
    if removed:
        log.info("removed %d image tag(s) of deleted apps: %s", len(removed), ", ".join(removed))
    return removed


def sweep_uploads(rack: Rack, *, grace: float = UPLOAD_GRACE, now: float | None = None) -> list[str]:
    """Delete `tmp/` uploads no waiting or running build names, once seen so for `grace` seconds."""
    if rack.settings.keep_sources:
        return []
    now = time.time() if now is None else now
    with rack.db.transaction() as conn:
        names = [row["name"] for row in fetchall(conn, "SELECT name FROM apps")]
        wanted = {
            row["source_url"].removeprefix("object://")
            for row in fetchall(conn, "SELECT source_url FROM builds WHERE status IN ('created', 'running')")
        }
    raw: Any = rack.redis.hgetall(_SEEN)
    seen = {k.decode(): float(v) for k, v in raw.items()}
    orphans = {key for app in names for key in rack.store.list_keys(f"{app}/tmp", limit=10_000)} - wanted
    removed = []
    for key in sorted(orphans):
        if key not in seen:
            rack.redis.hset(_SEEN, key, str(now))
        elif now - seen[key] >= grace:
            rack.store.delete(key)
            removed.append(key)
    gone = [key for key in seen if key not in orphans or key in removed]
    if gone:
        rack.redis.hdel(_SEEN, *gone)
    if removed:
        log.info("removed %d upload(s) no build used: %s", len(removed), ", ".join(removed))
    return removed

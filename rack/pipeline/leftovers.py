"""What a worker removes from its host now and then: images in its engine of apps that no longer exist.

Deleting an app removes its images from the registry at once (`rack.apps.delete`); each engine keeps its
own copies (tagged `<registry>/<app>:…`) until its worker's next sweep, at start-up and every
SWEEP_INTERVAL seconds. Build folders are swept by `rack.pipeline.folders.sweep`.
"""

from __future__ import annotations

import logging

import docker
import docker.errors

from rack.context import Rack
from rack.db import fetchall
from rack.pipeline.engine.stream import TRANSPORT

log = logging.getLogger(__name__)
SWEEP_INTERVAL = 600


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

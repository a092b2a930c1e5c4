"""The base image of a Dockerfile the rack writes itself: what it holds at a path, and its layers.

Paths are asked of a container made from the base (never started) through the engine's archive API:
the first tar header of a path is its metadata. Answers are kept per image id, which names the image's
content. The base's layers and config go to the app's repository once, from the engine's save (as the
fast push sends them, layers.py); later builds find them in their previous image's manifest, whose
base layers say which image they are (`rack.base`), and read the config blob by the image's id.
"""

from __future__ import annotations

import contextlib
import json
import tarfile
import threading
from collections import OrderedDict
from collections.abc import Callable

import docker.errors

from rack.errors import BuildPlatformError
from rack.pipeline import layers
from rack.pipeline.direct.files import Member
from rack.pipeline.engine.classic import Engine
from rack.pipeline.engine.stream import engine_errors
from rack.reasons import Reason
from rack.registry import Registry

ANNOTATION = "rack.base"
KEPT = 4096  # paths' answers kept in the worker, over every base
_answers: OrderedDict[tuple[str, str], Member | None] = OrderedDict()
_lock = threading.Lock()


class Base:
    """One base image on the engine, by id; `close` removes the container made to read it."""

    def __init__(self, engine: Engine, image_id: str) -> None:
        self.engine = engine
        self.id = image_id
        self._container: str | None = None

    def __enter__(self) -> Base:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        if self._container is not None:
            with contextlib.suppress(docker.errors.DockerException):
                self.engine.api.remove_container(self._container, force=True)
            self._container = None

    def member(self, path: str) -> Member | None:
        """What the base holds at `path` (no leading "/"), links not followed; None when nothing."""
        with _lock:
            if (self.id, path) in _answers:
                _answers.move_to_end((self.id, path))
                return _answers[(self.id, path)]
        found = self._ask(path)
        with _lock:
            _answers[(self.id, path)] = found
            while len(_answers) > KEPT:
                _answers.popitem(last=False)
        return found

    def _ask(self, path: str) -> Member | None:
        api = self.engine.api
        with engine_errors(f"reading /{path} of the base image"):
            if self._container is None:
                self._container = api.create_container(
                    self.id, command=["/"], network_disabled=True, entrypoint=[]
                )["Id"]
            response = api._get(  # the archive's first header only: the rest is never read
                api._url("/containers/{0}/archive", self._container), params={"path": "/" + path}, stream=True
            )
            try:
                if response.status_code == 404:
                    return None
                api._raise_for_status(response)
                with tarfile.open(fileobj=response.raw, mode="r|*") as tar:
                    first = tar.next()
            finally:
                response.close()
        if first is None:
            return None
        kind = "dir" if first.isdir() else "file" if first.isfile() else "link" if first.issym() else "other"
        return Member(
            path, kind, first.mode & 0o7777, first.uid, first.gid, int(first.mtime), link=first.linkname
        )


def config(engine: Engine, image_id: str) -> dict:
    """The engine's description of the base (`docker image inspect`): its config and its layers."""
    with engine_errors("inspecting the base image"):
        return engine.api.inspect_image(image_id)


def layers_from(manifest: dict | None, image_id: str) -> list[dict] | None:
    """The base's layer descriptors in an earlier manifest the rack wrote on the same base, if any."""
    if not manifest:
        return None
    found = [
        d for d in manifest.get("layers") or [] if (d.get("annotations") or {}).get(ANNOTATION) == image_id
    ]
    return found or None


def upload(
    engine: Engine, registry: Registry, repository: str, image_id: str, check: Callable[[], None]
) -> tuple[list[dict], bytes]:
    """Send the base's layers and config to the repository from the engine's save; return the layers'
    descriptors (marked as the base's) and the config."""
    saved = layers.upload_saved(engine, image_id, registry, repository, check=check)
    digest, _ = registry.upload(repository, [saved.config])
    if digest != image_id:
        raise BuildPlatformError(Reason.ENGINE, f"the engine saved the base {image_id} with another config")
    marked = [{**d, "annotations": {ANNOTATION: image_id}} for d in saved.layers]
    return marked, saved.config


def config_blob(registry: Registry, repository: str, image_id: str) -> dict | None:
    """The base's config as the registry holds it (its digest is the image id), or None."""
    body = registry.blob(repository, image_id, max_bytes=layers.JSON_MAX)
    return json.loads(body) if body is not None else None

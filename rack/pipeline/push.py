"""Push a service's image to the rack's registry: with the engine, or with skopeo when most of it is new.

The engine's push gzips each layer the registry lacks at gzip's default level on one core, about 20 MB/s
on a loaded 2-core worker, so the 100 MB layer of a large `COPY` costs seconds. skopeo reads the whole
image from the engine (`docker save`), compresses at a fast level on every core and skips the layers the
registry has, which is cheaper once the layers this build made are at least half the image and more than
FAST_MIN. An image on a large base whose layers the registry has stays with the engine's push, which
reads only the new layers. `RACK_FAST_PUSH=false`, or a worker without skopeo, always uses the engine.
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Callable
from pathlib import Path

import docker.errors

from rack import skopeo
from rack.errors import BadGateway, BuildPlatformError, Unavailable
from rack.pipeline.engine.classic import Engine, drain, engine_errors
from rack.reasons import Reason

FAST_LEVEL = 1
FAST_MIN = 32 * 1024 * 1024


def new_layers(engine: Engine, tag: str, *, previous: str | None, since: float) -> tuple[int, int]:
    """Return the bytes of the image's layers the registry may lack, and of the whole image.

    New: the layers above those it shares with the service's previous image when the engine has that,
    else the layers made since `since` (a build's start). Sizes come from the image's history, whose
    entries with a size are its layers in order.
    """
    api = engine.api
    with engine_errors(f"inspecting the image {tag}"):
        layers = api.inspect_image(tag)["RootFS"]["Layers"]
        sized = [h for h in api.history(tag) if (h.get("Size") or 0) > 0]  # newest first
        before = None
        if previous:
            with contextlib.suppress(docker.errors.ImageNotFound):  # not on this engine: by time instead
                before = api.inspect_image(previous)["RootFS"]["Layers"]
    total = sum(h["Size"] for h in sized)
    if before is not None:
        shared = 0
        while shared < min(len(layers), len(before)) and layers[shared] == before[shared]:
            shared += 1
        return sum(h["Size"] for h in sized[: len(layers) - shared]), total
    return sum(h["Size"] for h in sized if (h.get("Created") or 0) >= since), total


def push(
    engine: Engine,
    tag: str,
    *,
    previous: str | None,
    since: float,
    scratch: Path,
    check: Callable[[], None],
    write: Callable[[str], None],
) -> str:
    """Push the image and return the digest the registry gave it."""
    settings = engine.settings
    if settings.fast_push and shutil.which("skopeo"):  # a worker without skopeo pushes with the engine
        new, total = new_layers(engine, tag, previous=previous, since=since)
        if new >= FAST_MIN and 2 * new >= total:
            write(
                f"({new / 1e6:.0f} MB of {total / 1e6:.0f} MB new: skopeo copies it at gzip level"
                f" {FAST_LEVEL})\n"
            )
            return _skopeo(settings, tag, scratch=scratch, check=check)
    return drain(engine.push(tag, check=check), write)


def _skopeo(settings, tag: str, *, scratch: Path, check: Callable[[], None]) -> str:
    creds = {settings.registry: (settings.registry_username, settings.registry_password)}
    options = ["--src-daemon-host", settings.docker_host,
               "--dest-compress-format", "gzip", "--dest-compress-level", str(FAST_LEVEL)]  # fmt: skip
    try:
        digest = skopeo.copy(
            f"docker-daemon:{tag}", f"docker://{tag}", creds=creds, what=f"pushing {tag} failed",
            timeout=None, options=options, scratch=scratch, check=check,
        )  # fmt: skip
    except Unavailable:
        raise BuildPlatformError(Reason.REGISTRY, "skopeo is not installed on this worker") from None
    except BadGateway as exc:
        raise BuildPlatformError(Reason.REGISTRY, exc.message) from None
    if not digest:
        raise BuildPlatformError(Reason.REGISTRY, f"pushing {tag} gave no digest")
    return digest

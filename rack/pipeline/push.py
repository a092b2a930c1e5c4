"""Push a service's image to the rack's registry: with the engine, or streamed from its save when most
of it is new.

The engine's push gzips each layer the registry lacks at gzip's default level on one core, about 20 MB/s
on a loaded 2-core worker, so the 100 MB layer of a large `COPY` costs seconds. layers.py streams the
whole image from the engine (`docker save`) into the registry, gzipping at a fast level only layers that
shrink, which is cheaper once the layers this build made are at least half the image and more than
FAST_MIN. An image on a large base whose layers the registry has stays with the engine's push, which
reads only the new layers. `RACK_FAST_PUSH=false` always uses the engine.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import docker.errors

from rack.pipeline import layers
from rack.pipeline.engine.classic import Engine, drain, engine_errors

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
    check: Callable[[], None],
    write: Callable[[str], None],
) -> str:
    """Push the image and return the digest the registry gave it."""
    if engine.settings.fast_push:
        new, total = new_layers(engine, tag, previous=previous, since=since)
        if new >= FAST_MIN and 2 * new >= total:
            write(f"({new / 1e6:.0f} MB of {total / 1e6:.0f} MB new: streamed from the engine)\n")
            return layers.push(engine, tag, check=check)
    return drain(engine.push(tag, check=check), write)

"""Push an image to the rack's registry straight from the engine's `docker save` stream.

Each layer goes up in one streamed request while the engine writes it out, so nothing is copied to disk
and reading, compressing and uploading overlap. A layer is gzipped at level 1 when its first MiB shrinks
by at least a tenth; otherwise (random, media or already compressed data, which gzip would spend about
40 MB/s of a core on for nothing) it goes up as the plain tar, which image manifests allow. The manifest
is OCI's, which the Docker engine and containerd pull. Every layer of the saved image is uploaded, those
the registry has too (the registry keeps one copy of a blob): push.py brings only images the build mostly
made here.
"""

from __future__ import annotations

import json
import tarfile
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from rack.errors import BadGateway, BuildPlatformError
from rack.pipeline.engine.classic import Engine, split_image
from rack.pipeline.engine.stream import engine_errors
from rack.reasons import Reason
from rack.registry import Registry

CHUNK = 1 << 20  # bytes read from the engine at a time
SAMPLE = 1 << 20  # bytes of a layer gzipped to decide whether the layer is worth gzipping
GAIN = 0.9  # gzip a layer whose sample shrinks below this share of its size
LEVEL = 1
JSON_MAX = 16 << 20  # bytes of a saved image's config or manifest.json read into memory
TAR = "application/vnd.oci.image.layer.v1.tar"
GZIP = TAR + "+gzip"
CONFIG = "application/vnd.oci.image.config.v1+json"
MANIFEST = "application/vnd.oci.image.manifest.v1+json"


class Chunks:
    """A readable file over an iterator of byte chunks (what `tarfile` reads a stream from)."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self.chunks = iter(chunks)
        self.rest = memoryview(b"")

    def read(self, size: int = -1) -> bytes:
        parts = []
        want = size if size >= 0 else float("inf")
        while want > 0:
            if not self.rest:
                chunk = next(self.chunks, None)
                if chunk is None:
                    break
                self.rest = memoryview(chunk)
            part = self.rest[: int(min(want, len(self.rest)))]
            self.rest = self.rest[len(part) :]
            parts.append(part)
            want -= len(part)
        return b"".join(parts)


def saved(engine: Engine, tag: str, check: Callable[[], None]) -> Iterator[bytes]:
    """The engine's `docker save` of the image, calling `check` before each chunk (a cancel or a
    deadline raises through it); the engine's failures become platform errors here, not where the
    chunks are read (inside an upload to the registry)."""
    with engine_errors(f"saving {tag}"):
        for chunk in engine.api.get_image(tag, chunk_size=CHUNK):
            check()
            yield chunk


def worth_gzip(first: bytes) -> bool:
    """Tell whether a layer starting with `first` shrinks by a tenth at LEVEL (its first SAMPLE bytes)."""
    return bool(first) and len(zlib.compress(first[:SAMPLE], LEVEL)) < GAIN * len(first[:SAMPLE])


def layer_chunks(source, first: bytes) -> tuple[Iterator[bytes], str]:
    """The chunks to upload for a layer whose tar starts with `first` and goes on in `source`, and their
    media type: gzipped at LEVEL when the first bytes shrink by a tenth, else the tar itself."""
    plain = resumed(first, source)
    return (gzipped(plain), GZIP) if worth_gzip(first) else (plain, TAR)


def resumed(first: bytes, source) -> Iterator[bytes]:
    """`first`, then the rest of `source` CHUNK bytes at a time."""
    chunk = first
    while chunk:
        yield chunk
        chunk = source.read(CHUNK)


def gzipped(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """The chunks gzipped at LEVEL, as they come."""
    gz = zlib.compressobj(LEVEL, zlib.DEFLATED, 31)  # 31: with gzip's header and trailer
    for chunk in chunks:
        if out := gz.compress(chunk):
            yield out
    yield gz.flush()


@dataclass
class Saved:
    """What `upload_saved` sent: the image's layer descriptors, in order, and its config."""

    layers: list[dict]
    config: bytes


def upload_saved(
    engine: Engine, image: str, registry: Registry, repository: str, *, check: Callable[[], None]
) -> Saved:
    """Upload every layer of the engine's image `image` to the repository as its save streams out;
    return their descriptors and the image's config (not uploaded)."""
    layers: dict[str, dict] = {}  # saved member name -> its descriptor in the manifest
    configs: dict[str, bytes] = {}
    listed: list[dict] = []  # the save's manifest.json
    try:
        stream = Chunks(saved(engine, image, check))
        with tarfile.open(fileobj=stream, mode="r|", bufsize=CHUNK) as saving:  # type: ignore[call-overload]
            for member in saving:
                source = saving.extractfile(member) if member.isfile() else None
                if source is None:
                    continue
                if member.name.endswith("/layer.tar"):
                    chunks, media = layer_chunks(source, source.read(CHUNK))
                    digest, size = registry.upload(repository, chunks)
                    layers[member.name] = {"mediaType": media, "digest": digest, "size": size}
                elif member.name == "manifest.json":
                    listed = json.loads(_small(source, member))
                elif "/" not in member.name and member.name.endswith(".json"):
                    configs[member.name] = _small(source, member)
        if len(listed) != 1 or listed[0].get("Config") not in configs:
            raise BuildPlatformError(
                Reason.ENGINE, f"the engine saved {image} without its manifest or config"
            )
        return Saved([layers[name] for name in listed[0].get("Layers") or []], configs[listed[0]["Config"]])
    except (KeyError, tarfile.TarError, ValueError) as exc:
        raise BuildPlatformError(
            Reason.ENGINE, f"the engine's save of {image} could not be read: {exc}"
        ) from None


def manifest(config: dict, layers: list[dict]) -> bytes:
    """An OCI image manifest over a config's and layers' descriptors."""
    return json.dumps(
        {"schemaVersion": 2, "mediaType": MANIFEST, "config": config, "layers": layers}
    ).encode()


def push(engine: Engine, tag: str, *, check: Callable[[], None]) -> str:
    """Push the engine's image `tag` (`<registry>/<repository>:<tag>`) and return its manifest digest."""
    settings = engine.settings
    repository, reference = split_image(tag)
    repository = repository.removeprefix(f"{settings.registry}/")
    try:
        with Registry(settings) as registry:
            sent = upload_saved(engine, tag, registry, repository, check=check)
            digest, size = registry.upload(repository, [sent.config])
            body = manifest({"mediaType": CONFIG, "digest": digest, "size": size}, sent.layers)
            return registry.put_manifest(repository, reference, body, MANIFEST)
    except BadGateway as exc:
        raise BuildPlatformError(Reason.REGISTRY, f"pushing {tag}: {exc.message}") from None


def _small(source, member: tarfile.TarInfo) -> bytes:
    if member.size > JSON_MAX:
        raise BuildPlatformError(Reason.ENGINE, f"the engine saved a {member.size}-byte {member.name}")
    return source.read()

"""Build export and import: `build.json` then one `docker save` tar per image, as a .tgz streamed both ways.

Unlike Convox, a failed push fails the import (never a `complete` build with missing images), and a garbage
or truncated archive is refused before anything is loaded, pushed or recorded."""

from __future__ import annotations

import contextlib
import io
import json
import re
import shutil
import tarfile
import tempfile
import time
import zlib
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO, cast

import docker.errors
from ruamel.yaml import YAML
from ruamel.yaml.error import YAMLError

from rack import apps, objects, releases
from rack.builds import record as builds
from rack.context import Rack
from rack.errors import (
    BadGateway,
    BuildError,
    BuildUserError,
    Conflict,
    Invalid,
    TooLarge,
    Unavailable,
)
from rack.ids import new_id
from rack.pipeline.engine.classic import Engine
from rack.pipeline.engine.stream import drain, engine_errors
from rack.reasons import Reason
from rack.sql import builds as sql

CHUNK = 1024 * 1024
BLOCK = 512
JSON_MAX = 4 * 1024 * 1024
IMAGE_TAR = re.compile(r"([a-z][a-z0-9-]{0,62})\.(B[A-Z]{10})\.tar")
TEXT_FIELDS = ("description", "entrypoint", "git-sha", "manifest")


@contextlib.contextmanager
def _platform_errors() -> Iterator[None]:
    """Turn the engine's build errors into API errors: registry → 502, engine → 503."""
    try:
        yield
    except BuildError as exc:  # a user error here is a refused pull: the image is gone from the registry
        if exc.code == Reason.REGISTRY or isinstance(exc, BuildUserError):
            raise BadGateway(exc.message) from exc
        raise Unavailable(exc.message) from exc


class TgzWriter:
    """Write a gzip'd tar member by member, handing back compressed bytes as they are made."""

    def __init__(self) -> None:
        self._z = zlib.compressobj(1, zlib.DEFLATED, 31)  # level 1: 3x the speed of 6 for ~15% more bytes

    def member(self, name: str, fh: BinaryIO, size: int, *, mode: int = 0o644) -> Iterator[bytes]:
        """Yield the compressed header, data and padding of one regular file of `size` bytes."""
        info = tarfile.TarInfo(name)
        info.size, info.mode, info.mtime = size, mode, int(time.time())
        yield self._z.compress(info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape"))
        while chunk := fh.read(CHUNK):
            yield self._z.compress(chunk)
        yield self._z.compress(b"\0" * (-size % BLOCK)) + self._z.flush(zlib.Z_SYNC_FLUSH)  # sent whole now

    def end(self) -> Iterator[bytes]:
        """Yield the end-of-archive blocks and the gzip trailer."""
        yield self._z.compress(b"\0" * (2 * BLOCK))
        yield self._z.flush()


class Export:
    """A build's .tgz as an iterable of chunks; closing it (or reaching its end) ends the engine session."""

    def __init__(self, engine: Engine, row: dict) -> None:
        self.engine, self.row = engine, row

    def __iter__(self) -> Iterator[bytes]:
        try:  # an error here cuts the response short: the client's gzip reader sees the truncation
            yield from filter(None, self._chunks())
        finally:
            self.close()

    def _chunks(self) -> Iterator[bytes]:
        tgz, row = TgzWriter(), self.row
        text = (json.dumps(builds.serialize(row), indent=2) + "\n").encode()
        yield from tgz.member("build.json", io.BytesIO(text), len(text), mode=0o600)
        for service, image in sorted(row["images"].items()):
            with tempfile.TemporaryFile(prefix="rack-export-") as spool:
                with engine_errors(f"saving {image['image']}"):
                    for chunk in self.engine.api.get_image(image["image"], chunk_size=CHUNK):
                        spool.write(chunk)
                size = spool.tell()
                spool.seek(0)
                yield from tgz.member(f"{service}.{row['id']}.tar", spool, size)
        yield from tgz.end()

    def close(self) -> None:
        self.engine.close()  # closing twice is harmless


def export(rack: Rack, app: str, build_id: str) -> Export:
    """Check a complete build's images are at hand (pulling any the engine lacks); return its .tgz stream."""
    row = builds.get(rack, app, build_id)
    if row["status"] != "complete":
        raise Conflict(f"build {build_id} is {row['status']}: only a complete build can be exported")
    if not row["images"]:
        raise Conflict(f"build {build_id} has no images to export")
    with _platform_errors():
        engine = Engine(rack.settings)
        try:
            for image in row["images"].values():
                if not engine.has_image(image["image"]):
                    drain(engine.pull(image["image"]), lambda _line: None)
        except BaseException:
            engine.close()
            raise
    return Export(engine, row)


class Gunzip:
    """Read a request body as gunzipped bytes; a body that is not gzip, or ends early, is Invalid."""

    def __init__(self, body: BinaryIO, *, limit: int) -> None:
        self.body, self.limit, self.received = body, limit, 0
        self._z = zlib.decompressobj(31)
        self._buf, self._pos = b"", 0

    def read(self, size: int = CHUNK) -> bytes:
        while self._pos >= len(self._buf):
            if self._z.eof:
                return b""
            raw = self._z.unconsumed_tail or self._next()
            try:
                self._buf, self._pos = self._z.decompress(raw, CHUNK), 0
            except zlib.error as exc:
                raise Invalid(f"the import is not a gzip'd tar as `builds export` makes: {exc}") from None
        out = self._buf[self._pos : self._pos + size]
        self._pos += len(out)
        return out

    def _next(self) -> bytes:
        raw = self.body.read(CHUNK)
        if not raw:
            cut = f"truncated: its gzip stream ends at byte {self.received}" if self.received else "empty"
            raise Invalid(f"the import is {cut}: send the whole output of `convox builds export`")
        self.received += len(raw)
        if self.received > self.limit:
            raise TooLarge(f"the import is larger than the limit of {self.limit} bytes")
        return raw


def read_archive(body: BinaryIO, folder: Path, *, limit: int, max_bytes: int) -> tuple[dict, dict[str, Path]]:
    """Stream an export: return its build.json and each service's image tar, spooled into `folder`."""
    raw, source, tars, total = Gunzip(body, limit=limit), None, {}, 0
    try:
        with tarfile.open(fileobj=cast(BinaryIO, raw), mode="r|") as tar:
            for member in tar:
                name = member.name.removeprefix("./")
                if not member.isfile():
                    continue  # folders and the like carry nothing an import needs
                total += member.size
                if total > max_bytes:
                    raise TooLarge(f"the import unpacks to more than the limit of {max_bytes} bytes")
                fh = tar.extractfile(member)
                if fh is None:  # isfile() members always have data
                    continue
                if name == "build.json":
                    if member.size > JSON_MAX:
                        raise Invalid(f"build.json is larger than {JSON_MAX} bytes")
                    source = _parse_build(fh.read())
                elif m := IMAGE_TAR.fullmatch(name):
                    if m.group(1) in tars:
                        raise Invalid(f"the import holds two image archives for service {m.group(1)}")
                    tars[m.group(1)] = path = folder / name
                    with open(path, "wb") as out:
                        shutil.copyfileobj(fh, out, CHUNK)
                elif name.endswith(".tar"):
                    raise Invalid(f"unexpected image archive {name!r}: expected <service>.<BUILD ID>.tar")
            while raw.read(CHUNK):  # to the gzip trailer: a cut after the tar's last member shows too
                pass
    except tarfile.TarError as exc:
        raise Invalid(f"the import is not a tar as `convox builds export` makes: {exc}") from None
    if source is None:
        raise Invalid("the import has no build.json: is it the output of `convox builds export`?")
    return source, tars


def _parse_build(data: bytes) -> dict:
    try:
        source = json.loads(data)
    except ValueError as exc:
        raise Invalid(f"build.json is not valid JSON: {exc}") from None
    if not isinstance(source, dict) or not re.fullmatch(r"B[A-Z]{10}", str(source.get("id", ""))):
        raise Invalid("build.json is not a build: it needs an `id` like BABCDEFGHIJ")
    bad = [k for k in TEXT_FIELDS if not isinstance(source.get(k, ""), str)]
    if bad or not isinstance(source.get("images") or {}, dict):
        raise Invalid(f"build.json: {', '.join(bad) or 'images'} has the wrong type")
    return source


def check_images(source: dict, tars: dict[str, Path]) -> dict[str, tuple[str, list[str]]]:
    """Match the archives with the build's services (its images, else its manifest's); read each one's id."""
    expected = set(source.get("images") or {})
    if not expected:  # an export of a build made before images were recorded
        try:
            data = YAML(typ="safe", pure=True).load(source.get("manifest") or "")
        except YAMLError as exc:
            raise Invalid(f"build.json: the manifest is not valid YAML: {exc}") from None
        expected = set(map(str, (data.get("services") or {}) if isinstance(data, dict) else {}))
    for service, path in sorted(tars.items()):
        if not path.name.endswith(f".{source['id']}.tar"):
            raise Invalid(f"{path.name} is not an image of build {source['id']} (the build.json's id)")
        if service not in expected:
            raise Invalid(f"{path.name}: the build has no service {service!r}")
    missing = sorted(expected - set(tars))
    if missing or not tars:
        raise Invalid(f"the import lacks the image of: {', '.join(missing) or 'every service'}")
    return {service: image_id(path) for service, path in tars.items()}


def image_id(path: Path) -> tuple[str, list[str]]:
    """Read a `docker save` archive's manifest.json: the image id and the tags it loads as."""
    try:
        with tarfile.open(path, "r:") as tar:
            fh = tar.extractfile("manifest.json")
            entries = json.loads(fh.read(JSON_MAX)) if fh else None
    except (tarfile.TarError, KeyError, ValueError) as exc:
        raise Invalid(f"{path.name} is not an image archive as `docker save` makes: {exc}") from None
    if not (isinstance(entries, list) and len(entries) == 1 and isinstance(entries[0], dict)):
        raise Invalid(f"{path.name}: manifest.json must list exactly one image")
    digest = Path(str(entries[0].get("Config", ""))).name.removesuffix(".json")
    if not re.fullmatch(r"[0-9a-f]{64}", digest):
        raise Invalid(f"{path.name}: manifest.json names no image config")
    tags = entries[0].get("RepoTags") or []
    return f"sha256:{digest}", [str(t) for t in tags] if isinstance(tags, list) else []


def _load(engine: Engine, path: Path, ident: tuple[str, list[str]], tag: str, say: Callable) -> None:
    """Load one image archive and tag it `tag`, leaving none of the exporting rack's own tags behind."""
    image, tags = ident
    had = {tag for tag in tags if engine.has_image(tag)}
    say(f"Running: docker load -i {path.name}\n")
    with engine_errors(f"loading {path.name}"), open(path, "rb") as fh:
        try:
            for event in engine.api.load_image(fh) or []:
                if "error" in event or "errorDetail" in event:
                    raise Invalid(f"docker could not load {path.name}: {event.get('error') or event}")
        except docker.errors.APIError as exc:  # the engine refused the archive itself
            raise Invalid(f"docker could not load {path.name}: {exc.explanation or exc}") from None
    if not engine.has_image(image):
        raise Invalid(f"{path.name} did not hold the image its manifest.json names ({image})")
    say(f"Running: docker tag {image} {tag}\n")
    engine.tag(image, tag)
    for name in set(tags) - had:  # the exporting rack's names mean nothing here
        with contextlib.suppress(docker.errors.DockerException):
            engine.api.remove_image(name, noprune=True)


def import_build(rack: Rack, app: str, body: BinaryIO) -> dict:
    """Import an exported build into `app`: load, tag and push its images, then record it and its release."""
    apps.get(rack, app)
    began, settings, build_id = datetime.now(UTC), rack.settings, new_id("B")
    lines: list[str] = []
    say = lines.append  # the log: lines of our own and the push's condensed progress, each ending in \n
    images = {}
    with tempfile.TemporaryDirectory(prefix="rack-import-") as tmp:
        source, tars = read_archive(
            body, Path(tmp), limit=settings.max_upload_bytes, max_bytes=settings.extract_max_bytes
        )
        ids = check_images(source, tars)  # every archive is checked before anything is loaded
        say(f"Importing build {source['id']} of app {source.get('app') or '?'} as {build_id}\n")
        with _platform_errors(), Engine(settings) as engine:
            for service, path in sorted(tars.items()):
                tag = f"{settings.registry}/{app}:{service}.{build_id}"
                _load(engine, path, ids[service], tag, say)
                say(f"Running: docker push {tag}\n")
                digest = drain(engine.push(tag), say)
                images[service] = {"image": tag, "digest": digest}
    say(f"Imported {len(images)} image(s) as build {build_id}\n")
    logs = objects.store_build_log(rack, app, build_id, "".join(lines).encode())
    fields = {"logs": logs, "images": images, "entrypoint": source.get("entrypoint") or "", "started": began}
    copied = {"description": source.get("description") or "", "git_sha": source.get("git-sha") or ""}
    origin = {"imported_from": {"app": source.get("app"), "build": source["id"]}}
    try:
        with rack.db.transaction() as conn:  # the build, complete, and its release: all or nothing
            apps.get(rack, app, conn)
            manifest = source.get("manifest") or ""
            sql.insert(conn, id=build_id, app=app, source_url="", options=origin, manifest=manifest, **copied)
            release = releases.create_in(conn, app=app, build=build_id)
            fields["release"] = release["id"]
            done = sql.finish(conn, id=build_id, status="complete", fields=fields)
            if done is None:
                raise Conflict(f"build {build_id} was ended while it was imported")
            return done
    except BaseException:
        rack.store.delete(f"{app}/{objects.build_log_key(build_id)}")
        raise

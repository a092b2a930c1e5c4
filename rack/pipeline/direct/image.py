"""Write a copy-only Dockerfile's image (plan.py) straight into the registry, without the engine's build.

The image is the base's layers, then for each `COPY` its parts (files.py), each a layer, and a
`WORKDIR` folder's layer where one is made; its config is the base's with the steps' settings, as
BuildKit writes them. A part's layer is named in the manifest by its key (`rack.part`, the digest of
what it holds, with its uncompressed digest in `rack.diff_id`), so the next build of the service takes
every part its previous image has under the same key as it is and sends only the others: a one-file
change sends one part of a few MB. Nothing runs: no build step, no container (the base's paths are read
from a container that is never started). With `--no-cache` every part is sent again.
"""

from __future__ import annotations

import hashlib
import json
import shlex
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from rack.errors import BadGateway, BuildPlatformError
from rack.pipeline import layers, parallel
from rack.pipeline.direct import base as bases
from rack.pipeline.direct import files
from rack.pipeline.direct.plan import Plan, Setting, Workdir
from rack.pipeline.engine.classic import Engine, split_image
from rack.reasons import Reason
from rack.registry import Registry

PART = "rack.part"
DIFF_ID = "rack.diff_id"
SENDING = 2  # layers sent at a time
MAX_LAYERS = 100  # Docker mounts at most about 125 layers: leave the rest to the engine


@dataclass
class Made:
    """An image written to the registry."""

    digest: str
    manifest: bytes
    made: int = 0  # layers sent
    reused: int = 0  # layers taken from the previous image
    sent: int = 0  # bytes sent
    total: int = 0  # bytes of the image's layers


@dataclass
class _Layer:
    members: list[files.Member]
    history: str
    workdir: str = ""  # the folder a WORKDIR made
    key: str = field(init=False)

    def __post_init__(self) -> None:
        self.key = files.key(self.members)


class Prepared:
    """A written image's layers, planned from the context; `write` sends it (once, however many tags)."""

    def __init__(self, engine: Engine, image_id: str, planned: list, entrypoint: list[str]) -> None:
        self.engine = engine
        self.image_id = image_id
        self.planned = planned
        self.entrypoint = shlex.join(entrypoint)  # as the engine's `entrypoint` gives it
        self.made: Made | None = None
        self._lock = threading.Lock()

    @property
    def layer_count(self) -> int:
        """The layers it makes above the base."""
        return sum(isinstance(step, _Layer) for step in self.planned)

    def write(
        self, tag: str, *, previous: str | None, fresh: bool, check: Callable[[], None]
    ) -> tuple[Made, bool]:
        """Write the image as `tag` (`<registry>/<app>:<tag>`), or, once written, put it under `tag` too;
        return it and whether this call wrote it. `previous` is the service's previous image, whose
        parts are reused unless `fresh`."""
        settings = self.engine.settings
        repository, reference = split_image(tag)
        repository = repository.removeprefix(f"{settings.registry}/")
        with self._lock:
            try:
                with Registry(settings) as registry:
                    if self.made is not None:
                        registry.put_manifest(repository, reference, self.made.manifest, layers.MANIFEST)
                        return self.made, False
                    earlier = None
                    if previous and not fresh:
                        earlier = registry.manifest(repository, split_image(previous)[1])
                    self.made = _write(
                        self.engine,
                        registry,
                        repository,
                        reference,
                        self.image_id,
                        self.planned,
                        earlier,
                        check,
                    )
                    return self.made, True
            except BadGateway as exc:
                raise BuildPlatformError(Reason.REGISTRY, f"writing {tag}: {exc.message}") from None


def prepare(
    engine: Engine,
    plan: Plan,
    context: Path,
    *,
    hashes: files.Hashes,
    keep: files.Keep = None,
    check: files.Check = lambda: None,
) -> Prepared | str:
    """Plan the image's layers from the context and the base image; or say why the engine must build it.
    `hashes` names the content of context files, `keep` what `.dockerignore` leaves in it
    (files.copy_members)."""
    image_id = engine.find_image(plan.base)
    if image_id is None:
        return f"the base image {plan.base} is not on this worker"
    described = bases.config(engine, image_id)
    config = dict(described.get("Config") or {})
    if config.get("OnBuild"):
        return "its base image has ONBUILD steps"
    if config.get("Shell") and any(isinstance(s, Setting) and s.shell for s in plan.steps):
        return "its base image has another shell"
    user = config.get("User") or ""
    for step in plan.steps:
        if isinstance(step, Setting) and step.keyword == "USER":
            user = step.value
        elif isinstance(step, Workdir) and user not in ("", "root", "0", "0:0"):
            return "a WORKDIR comes under a USER"  # who owns the folder it makes: the engine decides
    with bases.Base(engine, image_id) as base:
        try:
            planned = _layers(plan, context, files.Tree(base.member), hashes, keep, check)
        except files.Refused as exc:
            return str(exc)
    if len(described["RootFS"]["Layers"]) + len(planned) > MAX_LAYERS:
        return f"it would make more than {MAX_LAYERS} layers"
    entrypoint = config.get("Entrypoint") or []
    for step in plan.steps:
        if isinstance(step, Setting) and step.keyword == "ENTRYPOINT":
            entrypoint = step.value
    return Prepared(engine, image_id, planned, entrypoint)


def _layers(
    plan: Plan, context: Path, tree: files.Tree, hashes: files.Hashes, keep: files.Keep, check: files.Check
) -> list[_Layer | Setting | Workdir]:
    """The steps in order: each copy's parts as layers, a made WORKDIR folder as one, settings as they are."""
    out: list[_Layer | Setting | Workdir] = []
    for step in plan.steps:
        if isinstance(step, Setting):
            out.append(step)
        elif isinstance(step, Workdir):
            made = files.chain(step.path, tree)
            new = [m for m in made if m.path not in tree.own and tree.get(m.path) is None]
            out.append(_Layer(made, step.text, step.path) if new else step)
            tree.add(made)
        else:
            above, members = files.copy_members(step, context, tree, hashes, keep, check)
            folders = {m.path: m for m in members if m.kind == "dir"}
            split = files.parts(members) or [[]]
            for n, part in enumerate(split, 1):
                shown = step.text if len(split) == 1 else f"{step.text} # part {n} of {len(split)}"
                out.append(_Layer(files.layer(above, folders, part), shown))
            tree.add([*above, *members])
    return out


def _write(
    engine: Engine,
    registry: Registry,
    repository: str,
    reference: str,
    image_id: str,
    planned: list,
    earlier: dict | None,
    check: Callable[[], None],
) -> Made:
    base_layers = bases.layers_from(earlier, image_id)
    base_config = bases.config_blob(registry, repository, image_id) if base_layers else None
    if base_layers is None or base_config is None:
        base_layers, raw = bases.upload(engine, registry, repository, image_id, check)
        base_config = json.loads(raw)
    reusable = {
        (d.get("annotations") or {}).get(PART): d
        for d in (earlier or {}).get("layers") or []
        if DIFF_ID in (d.get("annotations") or {})
    }
    made = Made(digest="", manifest=b"")
    sent = _send_all(
        engine, repository, [s for s in planned if isinstance(s, _Layer) and s.key not in reusable], check
    )
    made.made, made.sent = len(sent), sum(d["size"] for d in sent.values())
    made.reused = sum(isinstance(s, _Layer) for s in planned) - made.made
    descriptors = list(base_layers)
    diff_ids = list(base_config["rootfs"]["diff_ids"])
    history = list(base_config.get("history") or [])
    config = dict(base_config.get("config") or {})
    cmd_set = False
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    for step in planned:
        check()
        if isinstance(step, _Layer):
            found = reusable.get(step.key) or sent[step.key]
            made.total += found["size"]
            descriptors.append(found)
            diff_ids.append(found["annotations"][DIFF_ID])
            history.append({"created": now, "created_by": step.history, "comment": "rack"})
            if step.workdir:
                config["WorkingDir"] = step.workdir
            continue
        history.append({"created": now, "created_by": step.text, "comment": "rack", "empty_layer": True})
        if isinstance(step, Workdir):
            config["WorkingDir"] = step.path
        elif step.keyword in ("ENV", "LABEL"):
            _set(config, step)
        elif step.keyword == "USER":
            config["User"] = step.value
        elif step.keyword == "EXPOSE":
            config["ExposedPorts"] = {**(config.get("ExposedPorts") or {}), **{p: {} for p in step.value}}
        elif step.keyword == "CMD":
            config["Cmd"], cmd_set = step.value, True
        elif step.keyword == "ENTRYPOINT":
            config["Entrypoint"] = step.value
            if not cmd_set:
                config["Cmd"] = None
    body = {
        "architecture": base_config.get("architecture", "amd64"),
        "os": base_config.get("os", "linux"),
        **({"variant": base_config["variant"]} if base_config.get("variant") else {}),
        "created": now,
        "config": config,
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": history,
    }
    raw_config = json.dumps(body).encode()
    digest, size = registry.upload(repository, [raw_config])
    manifest = layers.manifest({"mediaType": layers.CONFIG, "digest": digest, "size": size}, descriptors)
    made.manifest = manifest
    made.digest = registry.put_manifest(repository, reference, manifest, layers.MANIFEST)
    made.total += sum(d["size"] for d in base_layers)
    return made


def _set(config: dict, step: Setting) -> None:
    if step.keyword == "LABEL":
        config["Labels"] = {**(config.get("Labels") or {}), **dict(step.value)}
        return
    env = list(config.get("Env") or [])
    for name, value in step.value:
        names = [e.partition("=")[0] for e in env]
        if name in names:  # replaced where it was, as BuildKit does
            env[names.index(name)] = f"{name}={value}"
        else:
            env.append(f"{name}={value}")
    config["Env"] = env


def _send_all(
    engine: Engine, repository: str, steps: list[_Layer], check: Callable[[], None]
) -> dict[str, dict]:
    """Send these layers, SENDING at a time (the registry takes each on a core of its own); return their
    descriptors by key. The first failure stops the others."""
    sent: dict[str, dict] = {}
    stopped = threading.Event()

    def checked() -> None:
        check()
        if stopped.is_set():
            raise BuildPlatformError(Reason.INTERNAL, "stopped: another layer failed")

    def job(step: _Layer) -> None:
        with Registry(engine.settings) as registry:
            sent[step.key] = _send(registry, repository, step, checked)

    unique = list({s.key: s for s in steps}.values())
    parallel.side_by_side([partial(job, s) for s in unique], limit=SENDING, stop=stopped.set)
    return sent


def _send(registry: Registry, repository: str, step: _Layer, check: Callable[[], None]) -> dict:
    """Send a layer (gzipped when it shrinks, as layers.py decides) and return its descriptor."""
    source = layers.Chunks(files.tar_stream(step.members, check))
    first = source.read(layers.CHUNK)
    if not layers.worth_gzip(first):  # the plain tar: its digest is its diff id
        digest, size = registry.upload(repository, layers.resumed(first, source))
        return _descriptor(layers.TAR, digest, size, step.key, digest)
    plain = hashlib.sha256()

    def hashed() -> Iterator[bytes]:
        for chunk in layers.resumed(first, source):
            plain.update(chunk)
            yield chunk

    digest, size = registry.upload(repository, layers.gzipped(hashed()))
    return _descriptor(layers.GZIP, digest, size, step.key, f"sha256:{plain.hexdigest()}")


def _descriptor(media: str, digest: str, size: int, key: str, diff_id: str) -> dict:
    return {"mediaType": media, "digest": digest, "size": size, "annotations": {PART: key, DIFF_ID: diff_id}}

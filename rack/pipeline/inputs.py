"""Digest a build's inputs, so a build whose inputs equal an earlier complete build's reuses its images.

The inputs: the source tree (a `manifest://` tree's digest, a git commit, or the folder hashed), the
manifest's name and text, the builder, and for each service either its `image:` (resolved to the
engine's image id) or its build: path, Dockerfile text, target, the values of the ARGs that Dockerfile
declares, the images it reads (FROM, `COPY --from`, each resolved to the engine's image id) and, under
BuildKit, the secrets offered to it. Anything that cannot be pinned (a base image the engine lacks, a
FROM that depends on an unset ARG) gives no digest: the build runs. Independent of the builder: it reads
the tree and asks `resolve` (the engine) for image ids.
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
import stat
from collections.abc import Callable, Iterable
from pathlib import Path

from rack.config import Settings
from rack.context import Rack
from rack.errors import BadGateway
from rack.pipeline import dockerfile
from rack.registry import Registry
from rack.sql import builds as sql

Resolve = Callable[[str], str | None]  # an image name -> the id the engine would build from, or None


def tree_digest(root: Path) -> str:
    """Hash a folder as a build sees it: paths, kinds, executable bits, contents, link targets."""
    h = hashlib.sha256()
    for path in sorted(_walk(root)):
        full = root / path
        st = os.lstat(full)
        if stat.S_ISLNK(st.st_mode):
            fields = ("link", path, "-", "", os.readlink(full))
        elif stat.S_ISDIR(st.st_mode):
            fields = ("dir", path, "-", "", "")
        else:
            with open(full, "rb") as fh:
                sha = hashlib.file_digest(fh, "sha256").hexdigest()
            fields = ("file", path, "x" if st.st_mode & 0o100 else "-", sha, "")
        h.update(("\0".join(fields) + "\n").encode("utf-8", "surrogateescape"))
    return h.hexdigest()


def _walk(root: Path) -> Iterable[str]:
    """Every path under root, relative to it; iterative, as trees may nest deeper than Python recurses."""
    folders = [""]
    while folders:
        rel = folders.pop()
        with os.scandir(root / rel if rel else root) as entries:
            for entry in entries:
                path = posixpath.join(rel, entry.name) if rel else entry.name
                if entry.is_dir(follow_symlinks=False):
                    folders.append(path)
                yield path


def digest(
    *,
    src: Path,
    tree: str,
    manifest_name: str,
    manifest_text: str,
    services: list,
    env: dict[str, str],
    options: dict,
    builder: str,
    secrets: dict[str, str],
    resolve: Resolve,
) -> str | None:
    """Return the digest of a build's inputs, or None when some input cannot be pinned."""
    parts: dict = {
        "tree": tree,
        "manifest": [manifest_name, manifest_text],
        "builder": builder,
        "development": bool(options.get("development")),
        "services": {},
    }
    for service in services:
        if service.image:
            image = resolve(service.image)
            if image is None:
                return None
            parts["services"][service.name] = {"image": image}
            continue
        path = dockerfile_path(service)
        try:
            text = (src / path).read_text("utf-8")
        except (OSError, UnicodeDecodeError):
            return None  # the build itself says what is wrong
        args = dockerfile.build_args(dockerfile.declared_args(text), env)
        bases = dockerfile.base_images(text, args)
        if bases is None:
            return None
        resolved = [resolve(image) for image in bases]
        if None in resolved:
            return None
        parts["services"][service.name] = {
            "path": service.build_path,
            "dockerfile": [path, text],
            "args": args,
            "bases": dict(zip(bases, resolved, strict=True)),
            "secrets": _hashed(secrets) if builder == "buildkit" else "",
        }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def dockerfile_path(service) -> str:
    """Where a built service's Dockerfile is in the source tree."""
    return posixpath.normpath(posixpath.join(service.build_path, service.dockerfile))


def _hashed(values: dict[str, str]) -> str:
    return hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()


def earlier_build(rack: Rack, *, app: str, inputs: str, build_id: str) -> dict | None:
    """The app's latest complete build with these inputs whose images the rack's registry still holds."""
    with rack.db.transaction() as conn:
        row = sql.complete_with_inputs(conn, app=app, inputs=inputs, other_than=build_id)
    return row if row is not None and in_registry(rack.settings, row["images"]) else None


def in_registry(settings: Settings, images: dict) -> bool:
    """Tell whether every image is in this rack's registry, by its digest (a HEAD of its manifest).

    A registry that cannot say (down, or asking for a token this check does not fetch) counts as no:
    the build then runs, which is never wrong.
    """
    prefix = settings.registry + "/"
    try:
        with Registry(settings) as registry:
            for entry in images.values():
                image, digest = entry.get("image", ""), entry.get("digest", "")
                if not image.startswith(prefix) or not digest.startswith("sha256:"):
                    return False
                if registry.digest(image[len(prefix) :].rsplit(":", 1)[0], digest) is None:
                    return False
    except BadGateway:
        return False
    return True

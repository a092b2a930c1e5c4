"""Assemble a build's source folder from a recorded tree and the app's stored contents."""

from __future__ import annotations

import posixpath
import tarfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import BinaryIO

from rack.context import Rack
from rack.errors import BuildPlatformError, BuildUserError, Conflict, RackError
from rack.pipeline.source import Stop, extract_members
from rack.reasons import Reason
from rack.sources import contents, tree


def assemble(
    rack: Rack, url: str, dest: Path, *, stop: Stop | None = None, only: Iterable[str] | None = None
) -> str:
    """Write the tree at `url` into the empty folder dest as safely as a tarball; return its digest.

    Raises BuildUserError (`user:source`) when the tree or one of its contents is gone or refused, and
    BuildPlatformError (`platform:storage`) when the store fails.
    """
    app, digest = tree.parse_url(url)
    try:
        entries = contents.load_tree(rack, url)
    except Conflict as exc:
        raise BuildUserError(Reason.SOURCE, exc.message) from None

    if only is not None:  # just these files (a build reads its manifest and Dockerfiles before the rest)
        wanted = {posixpath.normpath(path).strip("/") for path in only}
        entries = [e for e in entries if e.kind == "file" and posixpath.normpath(e.path).strip("/") in wanted]
    by_path = {e.path: e.sha256 for e in entries if e.kind == "file"}
    settings = rack.settings
    extract_members(
        (e.member() for e in entries),
        content_opener(rack, app, by_path),
        dest,
        max_bytes=settings.extract_max_bytes,
        max_entries=settings.extract_max_entries,
        max_depth=settings.extract_max_depth,
        stop=stop,
    )
    return digest


def content_opener(rack: Rack, app: str, by_path: dict[str, str]) -> Callable[[tarfile.TarInfo], BinaryIO]:
    """Open a tree member's stored content (`by_path`: the tree's paths and their sha256) for extraction."""

    try:
        open_content = contents.opener(rack, app, list(by_path.values()))
    except RackError as exc:
        raise BuildPlatformError(Reason.STORAGE, f"looking up the source's contents: {exc.message}") from exc

    def open_member(member: tarfile.TarInfo) -> BinaryIO:
        sha = by_path[member.name]
        try:
            return open_content(sha)
        except FileNotFoundError:
            raise BuildUserError(
                Reason.SOURCE,
                f"the content of {member.name!r} is gone from the rack: upload the source again",
            ) from None
        except RackError as exc:
            raise BuildPlatformError(Reason.STORAGE, f"reading {member.name!r}: {exc.message}") from exc

    return open_member

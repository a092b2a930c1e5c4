"""A build's private folder on the worker: make it, measure its depth, remove it, sweep away orphans.

Every walk here is iterative (an explicit stack of directory descriptors), so a tree of any depth can
neither raise RecursionError nor pass PATH_MAX, and removal never raises: a folder it cannot remove is
logged and left to the next sweep.
"""

from __future__ import annotations

import logging
import os
import re
import stat
import tempfile
import time
from pathlib import Path

from rack.apps import MAX_BUILD_TIMEOUT
from rack.context import Rack
from rack.sql import builds as sql

log = logging.getLogger(__name__)
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FOLDER = re.compile(r"(B[A-Z0-9]{10})-[A-Za-z0-9_]+")
# A folder older than the longest build an app may run cannot belong to a live build of any rack.
ABANDONED_AFTER = MAX_BUILD_TIMEOUT + 3600


def root(rack: Rack) -> Path:
    """Return the folder holding this host's build folders (made if missing)."""
    path = Path(rack.settings.build_dir or os.path.join(tempfile.gettempdir(), "rack-builds"))
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    return path


def make(rack: Rack, build_id: str) -> Path:
    """Make a private, empty folder for one build's work."""
    return Path(tempfile.mkdtemp(prefix=f"{build_id}-", dir=root(rack)))


def _scan(fd: int) -> list[tuple[str, bool]]:
    with os.scandir(fd) as entries:
        return [(e.name, e.is_dir(follow_symlinks=False)) for e in entries]


def depth_over(path: Path, limit: int) -> bool:
    """Tell whether any entry under `path` lies more than `limit` folders deep (links not followed)."""
    stack = [(os.open(path, _DIR_FLAGS), 0)]
    try:
        while stack:
            fd, depth = stack.pop()
            try:
                for name, is_dir in _scan(fd):
                    if depth + 1 > limit:
                        return True
                    if is_dir:
                        stack.append((os.open(name, _DIR_FLAGS, dir_fd=fd), depth + 1))
            finally:
                os.close(fd)
    finally:
        for fd, _ in stack:
            os.close(fd)
    return False


def remove(path: Path | str) -> bool:
    """Remove a folder and everything in it, however deep; never raise. Return whether it is gone."""
    try:
        _remove(os.fspath(path))
    except FileNotFoundError:
        return True
    except Exception:
        log.warning("could not remove the build folder %s", path, exc_info=True)
        return False
    return True


def _remove(path: str) -> None:
    parent_fd = os.open(os.path.dirname(path) or ".", _DIR_FLAGS)
    try:
        # (directory fd, its name in the parent, the parent's fd); fds stay open down the current branch
        stack: list[tuple[int, str, int]] = [(os.open(os.path.basename(path), _DIR_FLAGS, dir_fd=parent_fd),
                                              os.path.basename(path), parent_fd)]  # fmt: skip
        try:
            while stack:
                fd, name, up = stack[-1]
                sub = None
                for entry, is_dir in _scan(fd):
                    if is_dir:
                        sub = entry
                        break
                    os.unlink(entry, dir_fd=fd)
                if sub is not None:
                    os.chmod(sub, stat.S_IRWXU, dir_fd=fd, follow_symlinks=False)
                    stack.append((os.open(sub, _DIR_FLAGS, dir_fd=fd), sub, fd))
                    continue
                stack.pop()
                os.close(fd)
                os.rmdir(name, dir_fd=up)
        finally:
            for fd, _, _ in stack:
                os.close(fd)
    finally:
        os.close(parent_fd)


def sweep(rack: Rack) -> list[str]:
    """Remove the build folders on this host that no running build owns; return the ones removed."""
    # A folder of a build this rack knows is kept only while the build runs. One of an unknown build may
    # belong to another rack sharing the host, so it goes only once no build could still be using it.
    try:
        folders = [p for p in root(rack).iterdir() if _FOLDER.fullmatch(p.name)]
    except OSError:
        log.warning("could not list the build folders", exc_info=True)
        return []
    removed = []
    for folder in folders:
        build_id = _FOLDER.fullmatch(folder.name).group(1)  # type: ignore[union-attr]
        with rack.db.transaction() as conn:
            row = sql.get_by_id(conn, id=build_id)
        if row is not None and row["status"] == "running":
            continue
        if row is None:
            try:
                if time.time() - folder.lstat().st_mtime < ABANDONED_AFTER:
                    continue
            except FileNotFoundError:
                continue
        if remove(folder):
            removed.append(folder.name)
    if removed:
        log.info("removed %d build folder(s) no running build owns: %s", len(removed), ", ".join(removed))
    return removed

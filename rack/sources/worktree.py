"""A worker's source folder per app, kept from one build to the next and updated in place from its tree.

Building from the same folder each time lets BuildKit's context transfer (keyed on the folder and the
client's node id) send only the files that changed, and updating the folder from the tree's listing
writes only those files. Under `<build dir>/apps/<rack>/<app>/<slot>/` (a slot per build of the app that may
run at once): `lock` (held by one build for its whole length), `state.json` (what the folder holds, path
by path, with each file's stat as written) and `tree/` (the folder the build reads).

Safety: the state is removed before the folder is touched and written again once it matches the tree, so
an update cut short (a refusal, a cancel, a killed worker) leaves no state, and the next build writes the
folder again from empty under a new generation (a new context identity, so BuildKit sends everything).
Each update first compares the folder with the state: whatever the tree does not name, or whose stat
(inode, size, mtime, ctime, mode) is not the one written, is removed and written again. Paths obey the
extraction rules of a tarball's members (`rack.pipeline.source`). An app deleted and made again under the
same name starts from empty. Past `RACK_SOURCE_FOLDERS_MAX_BYTES` for all the folders together, each update
removes the least recently used folders no build holds (state and all), until the total is under it.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import secrets
import stat
import tarfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rack import apps
from rack.context import Rack
from rack.errors import BuildPlatformError, BuildUserError, Conflict, NotFound, RackError
from rack.pipeline import folders
from rack.pipeline.source import Stop, extract_members
from rack.reasons import Reason
from rack.sources import contents, tree
from rack.sources.assemble import content_opener

log = logging.getLogger(__name__)
VERSION = 1
STATE = "state.json"
SIZE = "bytes"  # the tree's disk use as last written, beside its state
# Every write of a generation gets its own nanoseconds on top of the tree's mtime (whole seconds), so a
# rewritten file never shows BuildKit the size and mtime of a version it already holds. Layers keep whole
# seconds (rounded to the nearest), so past this many writes a new generation starts.
WRITES_MAX = 400_000_000


@dataclass
class Checkout:
    """The app's folder, holding the tree: where it is, the tree's digest, what the update did."""

    path: Path
    digest: str
    generation: str  # the folder's identity for BuildKit's context transfer; new whenever it starts empty
    written: int = 0
    removed: int = 0
    fresh: bool = False  # written from empty


class _Stamped(tarfile.TarInfo):
    """A tree entry's header with the exact mtime (nanoseconds) its file is given."""

    __slots__ = ("mtime_ns",)
    mtime_ns: int


def base(rack: Rack) -> Path:
    """This rack's app folders on the host (racks sharing a build dir may have apps of the same name)."""
    own = hashlib.sha256(rack.settings.database_url.encode()).hexdigest()[:16]
    return folders.root(rack) / "apps" / own


@contextlib.contextmanager
def checkout(rack: Rack, url: str, *, stop: Stop | None = None) -> Iterator[Checkout | None]:
    """Hold a folder of the app's and bring it to the tree at `url`; None when every slot is in use.

    The folder is the caller's until the block ends (its lock is held). Raises as `assemble` does.
    """
    app, _ = tree.parse_url(url)
    try:
        created = str(apps.get(rack, app)["created"])
    except NotFound:
        raise BuildUserError(Reason.SOURCE, f"the app {app} is gone") from None
    for slot in range(max(1, rack.settings.app_max_running)):
        folder = base(rack) / app / str(slot)
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(folder / "lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue
            os.utime(fd)  # when the folder was last used, for the sweep
            held = _update(rack, folder, url, app=created, stop=stop)
            try:
                removed = cap(rack)  # this folder's lock is held: it stays
            except OSError:
                log.warning("could not keep the source folders under their cap", exc_info=True)
            else:
                if removed:
                    log.info("over the source folders' cap: removed %s", ", ".join(removed))
            yield held
            return
        finally:
            os.close(fd)  # and with it the lock
    yield None


def _update(rack: Rack, folder: Path, url: str, *, app: str, stop: Stop | None) -> Checkout:
    app_name, digest = tree.parse_url(url)
    try:
        entries = contents.load_tree(rack, url)
    except Conflict as exc:
        raise BuildUserError(Reason.SOURCE, exc.message) from None
    state = _load(folder / STATE, app=app)
    root = folder / "tree"
    (folder / STATE).unlink(missing_ok=True)  # until it is written again, the folder is not trusted
    if state is None or state["writes"] > WRITES_MAX:
        if not folders.remove(root):
            raise BuildPlatformError(Reason.INTERNAL, f"the app's source folder {root} cannot be removed")
        root.mkdir(mode=0o755)
        state = {"generation": secrets.token_hex(16), "writes": 0, "paths": {}}
        fresh = True
    else:
        fresh = False
    wanted = _wanted(entries)
    old: dict[str, dict[str, Any]] = state["paths"]
    removed = _prune(root, wanted, old)
    writes = state["writes"]
    members = []
    for path, entry in wanted.items():
        if path in removed.kept:
            continue
        member = _Stamped(entry.path)
        base_member = entry.member()
        for name in ("type", "mode", "size", "linkname", "mtime"):
            setattr(member, name, getattr(base_member, name))
        writes += 1
        member.mtime_ns = entry.mtime * 1_000_000_000 + writes
        members.append(member)
    settings = rack.settings
    extract_members(
        members,
        content_opener(rack, app_name, {e.path: e.sha256 for e in entries if e.kind == "file"}),
        root,
        max_bytes=settings.extract_max_bytes,
        max_entries=settings.extract_max_entries,
        max_depth=settings.extract_max_depth,
        stop=stop,
        replace=True,
        links=[path for path, entry in wanted.items() if entry.kind == "link" and path in removed.kept],
    )
    found = _walk(root)
    paths = {}
    for path, entry in wanted.items():
        st = found.get(path)
        if st is None:  # written above, so there; gone means someone else is in the folder
            raise BuildPlatformError(Reason.INTERNAL, f"{path!r} vanished from the app's source folder")
        paths[path] = {"want": _want(entry), "stat": _stat(st)}
    (folder / SIZE).write_text(str(sum(_disk(st) for st in found.values())))
    _save(folder / STATE, {"version": VERSION, "app": app, **state, "writes": writes, "paths": paths})
    return Checkout(
        path=root,
        digest=digest,
        generation=state["generation"],
        written=len(members),
        removed=removed.count,
        fresh=fresh,
    )


def _parts(path: str) -> str:
    return "/".join(p for p in path.split("/") if p not in ("", "."))


def _wanted(entries: list[tree.Entry]) -> dict[str, tree.Entry]:
    """Every path the folder must hold (the listed ones and their parents), by its normalised name."""
    wanted: dict[str, tree.Entry] = {}
    for entry in entries:
        path = _parts(entry.path)
        if not path:
            continue  # the root itself
        wanted.pop(path, None)  # a later entry replaces an earlier one, as in an archive
        wanted[path] = entry
    for path in list(wanted):
        parent = path.rpartition("/")[0]
        while parent and parent not in wanted:
            wanted[parent] = tree.Entry(path=parent, kind="dir", mode=0o755)  # implied by its paths
            parent = parent.rpartition("/")[0]
    return wanted


def _want(entry: tree.Entry) -> list:
    """What extraction makes of an entry, as the state records it."""
    if entry.kind == "dir":
        return ["dir"]
    if entry.kind == "link":
        return ["link", entry.link]
    mode = (entry.mode & 0o755) | 0o600
    return ["file", entry.sha256, mode if mode & 0o100 else mode & ~0o111, entry.mtime]


def _stat(st: os.stat_result) -> list[int]:
    if stat.S_ISDIR(st.st_mode):
        return [stat.S_IFDIR]
    return [st.st_mode, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]


@dataclass
class _Pruned:
    kept: set[str]
    count: int


def _prune(root: Path, wanted: dict[str, tree.Entry], old: dict[str, dict[str, Any]]) -> _Pruned:
    """Remove from the folder what the tree does not hold as the state says it was written."""
    kept: set[str] = set()
    gone: list[str] = []
    for path, st in sorted(_walk(root).items(), key=lambda item: item[0].split("/")):  # parents first
        if _under(path, gone):
            continue  # goes with its folder
        entry = wanted.get(path)
        record = old.get(path)
        if entry is not None and stat.S_ISDIR(st.st_mode) and entry.kind == "dir":
            kept.add(path)
        elif (
            entry is not None
            and record is not None
            and record.get("want") == _want(entry)
            and record.get("stat") == _stat(st)
        ):
            kept.add(path)
        else:
            gone.append(path)
    for path in gone:
        full = root / path
        if full.is_dir() and not full.is_symlink():
            if not folders.remove(full):
                raise BuildPlatformError(Reason.INTERNAL, f"{path!r} cannot be removed from the app's folder")
        else:
            full.unlink()
    return _Pruned(kept=kept, count=sum(1 for path in gone if path not in wanted))


def _under(path: str, gone: list[str]) -> bool:
    """Tell whether a folder above `path` is among the last removed (parents come before children)."""
    parent = path.rpartition("/")[0]
    return bool(gone) and bool(parent) and (parent == gone[-1] or parent.startswith(gone[-1] + "/"))


def _walk(root: Path) -> dict[str, os.stat_result]:
    """Every path under root (links not followed) with its stat; iterative, for trees of any depth."""
    found: dict[str, os.stat_result] = {}
    pending = [""]
    while pending:
        rel = pending.pop()
        with os.scandir(os.path.join(root, rel) if rel else root) as it:
            for item in it:
                path = f"{rel}/{item.name}" if rel else item.name
                st = item.stat(follow_symlinks=False)
                found[path] = st
                if stat.S_ISDIR(st.st_mode):
                    pending.append(path)
    return found


def _load(path: Path, *, app: str) -> dict | None:
    try:
        state = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(state, dict) or state.get("version") != VERSION or state.get("app") != app:
        return None
    if not isinstance(state.get("paths"), dict) or not isinstance(state.get("writes"), int):
        return None
    return state


def _save(path: Path, state: dict) -> None:
    tmp = path.with_name(STATE + ".tmp")
    with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600), "w") as fh:
        json.dump(state, fh, separators=(",", ":"))
    os.replace(tmp, path)


def _slots(rack: Rack) -> list[Path]:
    try:
        return sorted(s for a in base(rack).iterdir() for s in a.iterdir() if s.is_dir())
    except FileNotFoundError:
        return []
    except OSError:
        log.warning("could not list the apps' source folders", exc_info=True)
        return []


def _last_used(slot: Path) -> float:
    try:
        return (slot / "lock").stat().st_mtime
    except FileNotFoundError:
        return 0.0


def _clear(slot: Path) -> bool:
    """Remove a folder's tree and state unless a build holds it; return whether they are gone."""
    fd = os.open(slot / "lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False  # a build holds it: in use
        (slot / STATE).unlink(missing_ok=True)
        (slot / SIZE).unlink(missing_ok=True)
        return folders.remove(slot / "tree")
    finally:
        os.close(fd)


def _disk(st: os.stat_result) -> int:
    return st.st_blocks * 512


def size(slot: Path) -> int:
    """A folder's disk use: as recorded with its state, else measured."""
    if (slot / STATE).exists():
        with contextlib.suppress(OSError, ValueError):
            return int((slot / SIZE).read_text())
    try:
        return sum(_disk(st) for st in _walk(slot / "tree").values())
    except OSError:  # gone, or being written by its build
        return 0


def cap(rack: Rack) -> list[str]:
    """Remove the least recently used folders no build holds while all of them pass
    `RACK_SOURCE_FOLDERS_MAX_BYTES`; return those removed (`app/slot`)."""
    sizes = {slot: size(slot) for slot in _slots(rack) if (slot / "tree").exists()}
    total = sum(sizes.values())
    removed = []
    for slot in sorted(sizes, key=_last_used):
        if total <= rack.settings.source_folders_max_bytes:
            break
        if _clear(slot):
            total -= sizes[slot]
            removed.append(f"{slot.parent.name}/{slot.name}")
    return removed


def sweep(rack: Rack, *, idle: int | None = None) -> list[str]:
    """Remove the folders of apps that are gone, or unused for `idle` seconds (the source retention)."""
    keep = rack.settings.source_retention if idle is None else idle
    removed = []
    for slot in _slots(rack):
        app = slot.parent.name
        try:
            exists = apps.get(rack, app) is not None
        except NotFound:
            exists = False
        except RackError:
            continue
        if exists and time.time() - _last_used(slot) < keep:
            continue
        if _clear(slot):
            removed.append(f"{app}/{slot.name}")
    return removed

"""What a `COPY` puts in an image, as tar members, split into parts that change only with their files.

Members carry what BuildKit's `COPY` gives them: the source's mode, size, content and (files, links)
mtime, owned by root or by `--chown`; folders the copy creates are 0755. Folders get mtime 0: BuildKit
stamps them with the time of the build, so no two builds agree on them anyway, and a fixed value keeps a
part's layer the same from build to build. The members of one copy are split where a path's hash says so
(`parts`), so one changed file changes the one part that holds it: a layer of a few MB, not the whole
copy. Each part carries the folders above its members, with the same metadata in every part, so the
parts may be stacked in any number.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import tarfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

from rack.errors import BuildPlatformError
from rack.pipeline.direct.plan import Copy
from rack.reasons import Reason

BLOCK = 512
READ = 1 << 20
PARTS = 16  # a copy of many files is split into 16 to 32 parts
VERSION = 1  # of the members' layout: a new one makes no part of an earlier build's reusable


@dataclass(frozen=True)
class Member:
    """One tar member of a layer: an image path (no leading "/") and its metadata."""

    path: str
    kind: str  # "file", "dir" or "link"
    mode: int
    uid: int = 0
    gid: int = 0
    mtime: int = 0
    size: int = 0
    link: str = ""
    sha256: str = ""
    source: str = ""  # the host file a file's content is read from

    def header(self) -> bytes:
        info = tarfile.TarInfo(self.path + ("/" if self.kind == "dir" else ""))
        info.type = {"file": tarfile.REGTYPE, "dir": tarfile.DIRTYPE, "link": tarfile.SYMTYPE}[self.kind]
        info.mode, info.uid, info.gid, info.mtime = self.mode, self.uid, self.gid, self.mtime
        info.size, info.linkname = self.size, self.link
        return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")

    def key(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k != "source"}


class Tree:
    """What the image holds so far: the paths earlier steps made (all of them) over the base's (asked
    about one at a time)."""

    def __init__(self, base: Callable[[str], Member | None]) -> None:
        self.base = base  # the base image's member at a path, or None
        self.own: dict[str, Member] = {}  # paths the base does not have

    def get(self, path: str) -> Member | None:
        return self.own.get(path) or self.base(path)

    def add(self, members: list[Member]) -> None:
        """Take in what a step wrote (parents first); what it wrote over the base's stays the base's."""
        for member in members:
            parent = member.path.rpartition("/")[0]
            if member.path in self.own or parent in self.own or self.base(member.path) is None:
                self.own[member.path] = member


class Refused(Exception):
    """The copy is one the rack does not reproduce: the engine builds the Dockerfile instead."""


def folder(path: str, *, uid: int = 0, gid: int = 0) -> Member:
    return Member(path, "dir", 0o755, uid, gid)


def chain(path: str, tree: Tree, *, uid: int = 0, gid: int = 0) -> list[Member]:
    """The folders from the image's root down to `path`: those there already as they are, the others
    created (0755, owned by uid:gid). Refused when one of them is there but not a folder."""
    parts = [p for p in path.split("/") if p]
    out: list[Member] = []
    missing = False
    for n in range(1, len(parts) + 1):
        here = "/".join(parts[:n])
        found = None if missing else tree.get(here)
        if found is None:
            missing = True
            out.append(folder(here, uid=uid, gid=gid))
        elif found.kind != "dir":
            raise Refused(f"/{here} is not a folder in the image")
        else:
            out.append(found)
    return out


Hashes = Mapping[str, tuple[str, int]]  # a context file's sha256 and size, by relative path
Keep = Callable[[str], bool] | None  # whether a context path is in the context (.dockerignore)
Check = Callable[[], None]  # raises when the build must stop


def copy_members(
    copy: Copy, context: Path, tree: Tree, hashes: Hashes, keep: Keep = None, check: Check = lambda: None
) -> tuple[list[Member], list[Member]]:
    """Return the folders down to the copy's destination and the members it writes, in path order.

    `keep` tells whether a context path (relative) is in the context, under `.dockerignore` rules; a
    folder it leaves out is still there when something below it is kept, as the engine's context has
    it. `hashes` names the content of context files (one not there, or of another size, is read and
    hashed). Refused for what the rack does not reproduce: a copy into a folder of the base image (what
    is below it is not known), or a file where the image has a folder.
    """
    root = context.resolve()
    dest = copy.dest.strip("/")
    above: dict[str, Member] = {}
    members: dict[str, Member] = {}
    for source in copy.sources:
        host = root / source if source != "." else root
        try:
            st = host.lstat()
        except FileNotFoundError:
            raise Refused(f"the COPY source {source} is not in the context") from None
        if keep is not None and source != "." and not keep(source) and not stat.S_ISDIR(st.st_mode):
            raise Refused(f"the COPY source {source} is left out by .dockerignore")
        if stat.S_ISLNK(st.st_mode) or not host.resolve().is_relative_to(root):
            raise Refused(f"the COPY source {source} is a link")
        if stat.S_ISDIR(st.st_mode):
            if not dest or tree.base(dest) is not None:
                raise Refused(f"/{dest} is in the base image: what the copy lands on is not known")
            for member in chain(dest, tree, uid=copy.uid, gid=copy.gid):
                above.setdefault(member.path, member)
            for member in _walk(host, root, dest, copy, hashes, keep, check):
                there = tree.own.get(member.path)
                if there is not None and (there.kind == "dir") != (member.kind == "dir"):
                    raise Refused(f"/{member.path} is a folder on one side only")
                members[member.path] = member
        elif stat.S_ISREG(st.st_mode):
            name = dest
            at = tree.get(dest) if dest else None
            if copy.into or not dest or (at is not None and at.kind == "dir"):
                name = f"{dest}/{source.rsplit('/', 1)[-1]}".lstrip("/")
            for member in chain(name.rpartition("/")[0], tree, uid=copy.uid, gid=copy.gid):
                above.setdefault(member.path, member)
            there = tree.get(name)
            if there is not None and there.kind != "file":
                raise Refused(f"/{name} is a folder or a link in the image")
            members[name] = _file(name, host, st, source, copy, hashes, check)
        else:
            raise Refused(f"the COPY source {source} is not a file, folder or link")
    return sorted(above.values(), key=lambda m: m.path), [
        members[p] for p in sorted(members) if p not in above
    ]


def _walk(
    host: Path, root: Path, dest: str, copy: Copy, hashes: Hashes, keep: Keep, check: Check
) -> list[Member]:
    """The members under a copied folder, parents first; with `keep`, those it keeps and the folders
    above them."""
    out: list[tuple[Member, str]] = []
    stack = [(host, dest)]
    while stack:
        here, image = stack.pop()
        with os.scandir(here) as found:
            entries = sorted(found, key=lambda e: e.name)
        for entry in entries:
            st = entry.stat(follow_symlinks=False)
            path = f"{image}/{entry.name}" if image else entry.name
            relative = os.path.relpath(entry.path, root)
            if stat.S_ISDIR(st.st_mode):
                out.append((Member(path, "dir", stat.S_IMODE(st.st_mode), copy.uid, copy.gid), relative))
                stack.append((Path(entry.path), path))
            elif keep is not None and not keep(relative):
                continue
            elif stat.S_ISREG(st.st_mode):
                out.append((_file(path, Path(entry.path), st, relative, copy, hashes, check), relative))
            elif stat.S_ISLNK(st.st_mode):
                target = os.readlink(entry.path)
                link = Member(path, "link", 0o777, copy.uid, copy.gid, int(st.st_mtime), link=target)
                out.append((link, relative))
            else:
                raise Refused(f"{relative} is not a file, folder or link")
    if keep is None:
        return [m for m, _ in out]
    held: set[str] = set()  # folders with something kept below them
    for member, _ in out:
        if member.kind != "dir":
            parent = member.path.rpartition("/")[0]
            while parent not in held and parent != dest and parent:
                held.add(parent)
                parent = parent.rpartition("/")[0]
    return [m for m, rel in out if m.kind != "dir" or m.path in held or keep(rel)]


def _file(
    path: str, host: Path, st: os.stat_result, relative: str, copy: Copy, hashes: Hashes, check: Check
) -> Member:
    digest, size = hashes.get(relative, ("", -1))
    if size != st.st_size:  # not named by the tree: read (a cancel or the deadline stops it here)
        check()
        digest = _hash(host)
    return Member(
        path, "file", stat.S_IMODE(st.st_mode), copy.uid, copy.gid, int(st.st_mtime), st.st_size,
        sha256=digest, source=str(host),
    )  # fmt: skip


def _hash(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def parts(members: list[Member]) -> list[list[Member]]:
    """Split a copy's members into runs that end where a path's hash says: about PARTS to 2*PARTS of
    them, the same runs from build to build but for the one a changed path is in."""
    every = 1
    while every * 2 * PARTS <= len(members):
        every *= 2
    if every == 1:
        return [members] if members else []
    out: list[list[Member]] = [[]]
    for member in members:
        out[-1].append(member)
        if int.from_bytes(hashlib.sha256(member.path.encode()).digest()[:4], "big") % every == 0:
            out.append([])
    return [p for p in out if p]


def layer(above: list[Member], folders: Mapping[str, Member], part: list[Member]) -> list[Member]:
    """A part's members with the folders above them it does not hold itself: those down to the copy's
    destination (`above`, in every part) and the copy's own (`folders`, by path)."""
    have = {m.path for m in part} | {m.path for m in above}
    needed: dict[str, Member] = {}
    for member in part:
        parent = member.path.rpartition("/")[0]
        while parent and parent not in have and parent not in needed:
            needed[parent] = folders[parent]
            parent = parent.rpartition("/")[0]
    return sorted([*above, *needed.values(), *part], key=lambda m: m.path)


def key(members: list[Member]) -> str:
    """The digest of what a layer holds: equal keys make equal layers."""
    text = json.dumps([VERSION, [m.key() for m in members]], separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def tar_stream(members: list[Member], check: Callable[[], None]) -> Iterator[bytes]:
    """The layer's tar, as it is read from the files (`check` is called between files)."""
    pending: list[bytes] = []
    held = 0
    for member in members:
        pending.append(member.header())
        held += len(pending[-1])
        if member.kind == "file":
            check()
            left = member.size
            fd = os.open(member.source, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)  # never a link out
            with open(fd, "rb") as f:
                while left:
                    chunk = f.read(min(READ, left))
                    if not chunk:
                        raise BuildPlatformError(Reason.INTERNAL, f"/{member.path} shrank while it was read")
                    left -= len(chunk)
                    pending.append(chunk)
                    held += len(chunk)
                    if held >= READ:
                        yield b"".join(pending)
                        pending, held = [], 0
            if member.size % BLOCK:
                pending.append(b"\0" * (BLOCK - member.size % BLOCK))
    pending.append(b"\0" * (2 * BLOCK))
    yield b"".join(pending)

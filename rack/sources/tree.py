"""A source tree as a client lists it: paths with their type, mode, size and content sha256."""

from __future__ import annotations

import hashlib
import json
import re
import tarfile
from dataclasses import dataclass

from rack.errors import Invalid

SCHEME = "manifest://"
SHA256 = re.compile(r"[0-9a-f]{64}")
MAX_TREE_BYTES = 64 * 1024 * 1024  # the JSON listing; ~150 bytes an entry leaves room for 400,000
KINDS = ("file", "dir", "link")
_MTIME_MAX = 8**11 - 1  # what a tar header holds


@dataclass(frozen=True)
class Entry:
    """One path of a tree. Files name their content by sha256; links carry their target."""

    path: str
    kind: str = "file"
    mode: int = 0o644
    size: int = 0
    sha256: str = ""
    link: str = ""
    mtime: int = 0

    @property
    def executable(self) -> bool:
        return bool(self.mode & 0o100)

    def member(self) -> tarfile.TarInfo:
        """The tar header extraction would see for this entry."""
        info = tarfile.TarInfo(self.path)
        info.type = {"file": tarfile.REGTYPE, "dir": tarfile.DIRTYPE, "link": tarfile.SYMTYPE}[self.kind]
        info.mode, info.size, info.linkname, info.mtime = self.mode, self.size, self.link, self.mtime
        return info

    def as_json(self) -> dict:
        return {k: v for k, v in vars(self).items() if v not in ("", 0) or k in ("path", "mode")}


def parse(data: bytes, *, max_entries: int, max_bytes: int) -> list[Entry]:
    """Read `{"files": [{path, type, mode, size, sha256, link, mtime}…]}`, checking each entry's shape."""
    try:
        body = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise Invalid(f"the source tree is not JSON: {exc}") from None
    items = body.get("files") if isinstance(body, dict) else None
    if not isinstance(items, list):
        raise Invalid('the source tree must be a JSON object with a "files" list')
    if len(items) > max_entries:
        raise Invalid(f"the source tree has {len(items)} entries, more than the limit of {max_entries}")
    entries = [_entry(n, item) for n, item in enumerate(items)]
    if len({e.path.strip("/") for e in entries}) != len(entries):
        raise Invalid("the source tree names a path twice")
    total = sum(e.size for e in entries)
    if total > max_bytes:
        raise Invalid(f"the source tree holds {total} bytes, more than the limit of {max_bytes}")
    return entries


def _entry(n: int, item: object) -> Entry:
    if not isinstance(item, dict):
        raise Invalid(f"source tree entry {n} must be an object")
    path, kind = item.get("path"), item.get("type", "file")
    if not isinstance(path, str) or not path:
        raise Invalid(f"source tree entry {n} needs a path")
    if kind not in KINDS:
        raise Invalid(f"source tree entry {path!r}: type must be one of {', '.join(KINDS)}")
    numbers = {}
    for name, top in (("mode", 0o7777), ("size", 2**63 - 1), ("mtime", _MTIME_MAX)):
        value = item.get(name, 0o644 if name == "mode" else 0)
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= top:
            raise Invalid(f"source tree entry {path!r}: {name} must be a whole number from 0 to {top}")
        numbers[name] = value
    sha, link = item.get("sha256", ""), item.get("link", "")
    if kind == "file" and not (isinstance(sha, str) and SHA256.fullmatch(sha)):
        raise Invalid(f"source tree entry {path!r}: sha256 must be 64 lowercase hex digits")
    if kind == "link" and not (isinstance(link, str) and link):
        raise Invalid(f"source tree entry {path!r}: a link needs its target")
    if kind != "file":
        sha, numbers["size"] = "", 0
    return Entry(path=path, kind=kind, sha256=sha, link=link if kind == "link" else "", **numbers)


def digest(entries: list[Entry]) -> str:
    """The tree's identity: what a build sees of it (paths, kinds, executable bits, contents, link targets).

    Modes beyond the executable bit and mtimes are left out: extraction normalises the one and the
    image's content does not depend on the other.
    """
    h = hashlib.sha256()
    for e in sorted(entries, key=lambda e: e.path.strip("/")):
        fields = (e.kind, e.path.strip("/"), "x" if e.executable else "-", e.sha256, e.link)
        h.update(("\0".join(fields) + "\n").encode("utf-8", "surrogateescape"))
    return h.hexdigest()


def url(app: str, tree_digest: str) -> str:
    return f"{SCHEME}{app}/{tree_digest}"


def parse_url(value: str) -> tuple[str, str]:
    """Split `manifest://app/<digest>` into its app and digest."""
    rest = value[len(SCHEME) :] if value.startswith(SCHEME) else ""
    app, _, tree_digest = rest.partition("/")
    if not app or not SHA256.fullmatch(tree_digest):
        raise Invalid(f"not a source tree URL: {value!r} (expected {SCHEME}<app>/<sha256>)")
    return app, tree_digest

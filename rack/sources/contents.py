"""An app's file contents in the object store under their sha256: which are missing, and receiving them.

Contents arrive in batches, each an uncompressed tar whose members are named by their sha256, and a batch
is stored as one object (a pack: its contents one after another), so a batch costs the store one write,
not one per file. Every member is checked against its name as it streams into the store and recorded with
its place in the pack, so an upload cut short keeps the contents it delivered whole: the client asks again
what is missing and sends only the rest.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import tarfile
import time
from collections.abc import Callable
from typing import BinaryIO, cast

from rack import apps, metrics, objects
from rack.context import Rack
from rack.errors import BuildUserError, Conflict, Invalid
from rack.pipeline.source import check_members
from rack.sources import tree
from rack.sql import sources as sql

CHUNK = 1024 * 1024


def key(app: str, sha256: str) -> str:
    """Where a content lives in the store: beside the app's objects, out of the objects API's reach."""
    return f"{app}/{objects.RESERVED}/{sha256[:2]}/{sha256}"


def touch_lag(rack: Rack) -> int:
    """Seconds a content's or a tree's last use may be recorded late: a tenth of the retention, at most an
    hour, so a tree asked about again soon after (each build asks twice) does not rewrite every row it
    names. What a build used is still kept for the whole retention (the sweep goes by the build's start,
    recorded exactly); a content or tree only asked about, with no build made from it, is kept for at
    least nine tenths of it."""
    return min(3600, rack.settings.source_retention // 10)


def missing(rack: Rack, app: str, shas: list[str]) -> list[str]:
    """Return the contents (in the order asked, once each) the app lacks; the others count as used now."""
    unique = list(dict.fromkeys(shas))
    with rack.db.transaction() as conn:
        present = sql.touch_present(conn, app=app, shas=unique, lag=touch_lag(rack))
    return [sha for sha in unique if sha not in present]


def create_tree(rack: Rack, app: str, data: bytes) -> dict:
    """Record a source tree whose contents are all stored; return its URL and size, or what is missing.

    The answer is `{"Url": "manifest://…", "files": N, "bytes": N, "missing": []}` when the tree is
    complete, and `{"missing": [sha256, …]}` (nothing recorded) when contents must be uploaded first.
    """
    apps.get(rack, app)
    settings = rack.settings
    entries = tree.parse(data, max_entries=settings.extract_max_entries, max_bytes=settings.extract_max_bytes)
    try:
        check_members((e.member() for e in entries), max_depth=settings.extract_max_depth)
    except BuildUserError as exc:  # refused in the same words as a tarball's member
        raise Invalid(exc.message) from None
    files = [e for e in entries if e.kind == "file"]
    lacking = missing(rack, app, [e.sha256 for e in files])
    if lacking:
        return {"missing": lacking}
    digest = tree.digest(entries)
    size = sum(e.size for e in files)
    with rack.db.transaction() as conn:
        if not sql.touch_tree(conn, app=app, digest=digest, lag=touch_lag(rack)):
            entries_json = [_wire(e) for e in entries]
            sql.put_tree(conn, app=app, digest=digest, entries=entries_json, files=len(files), size=size)
    return {"Url": tree.url(app, digest), "files": len(files), "bytes": size, "missing": []}


def load_tree(rack: Rack, url: str) -> list[tree.Entry]:
    """The entries of a recorded tree; Conflict when it is unknown (never made, or swept)."""
    app, digest = tree.parse_url(url)
    with rack.db.transaction() as conn:
        row = sql.get_tree(conn, app=app, digest=digest)
    if row is None:
        raise Conflict(f"source tree not found: {url} (upload the source again)")
    return [tree.Entry(**_fields(item)) for item in row["entries"]]


def _fields(item: dict) -> dict:
    return {("kind" if k == "type" else k): v for k, v in item.items()}


def pack_key(app: str, pack: str) -> str:
    """Where a batch of contents lives in the store, as received (its contents one after another)."""
    return f"{app}/{objects.RESERVED}/packs/{pack}"


def pack_name(now: float | None = None) -> str:
    """A new pack's name: when it was made (Unix seconds), so the sweep can tell an upload in flight."""
    return f"{int(time.time() if now is None else now):011d}-{secrets.token_hex(12)}"


def pack_made(name: str) -> float | None:
    """When a pack was made, from its name; None for a name that does not say (made before they did)."""
    made, dash, _ = name.partition("-")
    return float(made) if dash and made.isdigit() else None


def receive(rack: Rack, app: str, body: BinaryIO) -> dict:
    """Store every content of a tar batch as one object (a pack); return `{"stored": N, "bytes": N}`.

    A batch cut short (or holding a content that is not what its name says) keeps, and records, the
    contents before the fault, then raises Invalid.
    """
    apps.get(rack, app)
    pack = _Pack(body, limit=rack.settings.extract_max_bytes)
    name = pack_name()
    rack.store.put_stream(pack_key(app, name), cast(BinaryIO, pack))
    if pack.stored:
        with rack.db.transaction() as conn:
            sql.add_contents(conn, app=app, pack=name, contents=pack.stored)
        metrics.add_upload_bytes(rack, sum(size for _, size, _ in pack.stored))
    else:
        rack.store.delete(pack_key(app, name))
    if pack.error is not None:
        raise pack.error
    return {"stored": len(pack.stored), "bytes": sum(size for _, size, _ in pack.stored)}


class _Pack:
    """A tar batch read as its contents one after another, each checked against its name as it passes.

    At the first fault (a cut, a bad member, a content that does not match) the stream ends there: what
    was stored before it stays whole and recorded in `stored` (sha256, size, offset), the fault in `error`.
    """

    def __init__(self, body: BinaryIO, *, limit: int) -> None:
        self.limit = limit
        self.stored: list[tuple[str, int, int]] = []
        self.error: Invalid | None = None
        self.offset = 0
        self._current: tuple[_Checked, str, int, int] | None = None
        self._tar: tarfile.TarFile | None = None
        try:
            self._tar = tarfile.open(fileobj=body, mode="r|")
        except (tarfile.TarError, EOFError) as exc:
            self._fault(exc)

    def read(self, size: int = CHUNK) -> bytes:
        while self.error is None:
            try:
                if self._current is None and not self._next():
                    return b""
                assert self._current is not None
                checked, sha, length, start = self._current
                chunk = checked.read(size)
            except (tarfile.TarError, EOFError, Invalid) as exc:
                self._fault(exc)
                break
            if chunk:
                self.offset += len(chunk)
                return chunk
            self.stored.append((sha, length, start))  # read to its end: whole and checked
            self._current = None
        return b""

    def _next(self) -> bool:
        assert self._tar is not None
        member = self._tar.next()
        self._tar.members.clear()  # type: ignore[attr-defined]  # a stream keeps every header otherwise
        if member is None:
            return False
        sha = member.name
        if not tree.SHA256.fullmatch(sha) or not member.isfile():
            raise Invalid(
                f"a contents batch holds only files named by their sha256, not {member.name[:80]!r}"
            )
        if member.size > self.limit:
            raise Invalid(f"content {sha} is {member.size} bytes, more than the limit of {self.limit}")
        data = self._tar.extractfile(member)
        assert data is not None  # a regular file member has data
        self._current = (_Checked(cast(BinaryIO, data), sha, member.size), sha, member.size, self.offset)
        return True

    def _fault(self, exc: BaseException) -> None:
        if isinstance(exc, Invalid):
            self.error = exc
        else:
            self.error = Invalid(
                f"the contents upload was cut short after {len(self.stored)} contents ({exc}): send the rest"
            )


class _Checked:
    """Read a content, failing at its end unless it had the promised length and sha256 (nothing is kept)."""

    def __init__(self, raw: BinaryIO, sha: str, size: int) -> None:
        self.raw, self.sha, self.size, self.seen = raw, sha, size, 0
        self.hash = hashlib.sha256()

    def read(self, size: int = CHUNK) -> bytes:
        chunk = self.raw.read(size)
        self.seen += len(chunk)
        self.hash.update(chunk)
        if not chunk and self.seen < self.size:
            raise tarfile.ReadError("unexpected end of data")
        if not chunk and self.hash.hexdigest() != self.sha:
            raise Invalid(
                f"content {self.sha} does not match its sha256 (was the file changed while it was sent?)"
            )
        return chunk


def opener(rack: Rack, app: str, shas: list[str]) -> Callable[[str], BinaryIO]:
    """Look up where these contents are (one query); return a function opening one by its sha256,
    raising FileNotFoundError for a content the app does not have."""
    with rack.db.transaction() as conn:
        found = sql.locations(conn, app=app, shas=list(dict.fromkeys(shas)))

    def open_one(sha256: str) -> BinaryIO:
        if sha256 not in found:
            raise FileNotFoundError(f"no stored content {sha256} in {app}")
        pack, at, size = found[sha256]
        if not pack:  # stored alone, under its sha256
            return rack.store.open(key(app, sha256))
        return rack.store.open(pack_key(app, pack), start=at, length=size)

    return open_one


def open_content(rack: Rack, app: str, sha256: str) -> BinaryIO:
    """Open a stored content; FileNotFoundError when it is gone."""
    return opener(rack, app, [sha256])(sha256)


def tree_json(entries: list[tree.Entry]) -> bytes:
    """The body a client sends for a tree (for tests and tools that list a tree themselves)."""
    return json.dumps({"files": [_wire(e) for e in entries]}).encode()


def _wire(entry: tree.Entry) -> dict:
    return {("type" if k == "kind" else k): v for k, v in entry.as_json().items()}

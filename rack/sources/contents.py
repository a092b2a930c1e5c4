"""An app's file contents in the object store under their sha256: which are missing, and receiving them.

Contents arrive in batches, each an uncompressed tar whose members are named by their sha256. Every member
is checked against its name as it streams into the store and recorded once stored, so an upload cut short
keeps the contents it delivered whole: the client asks again what is missing and sends only the rest.
"""

from __future__ import annotations

import hashlib
import json
import tarfile
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


def missing(rack: Rack, app: str, shas: list[str]) -> list[str]:
    """Return the contents (in the order asked, once each) the app lacks; the others count as used now."""
    unique = list(dict.fromkeys(shas))
    with rack.db.transaction() as conn:
        present = sql.touch_present(conn, app=app, shas=unique)
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
        sql.put_tree(
            conn, app=app, digest=digest, entries=[_wire(e) for e in entries], files=len(files), size=size
        )
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


def receive(rack: Rack, app: str, body: BinaryIO) -> dict:
    """Store every content of a tar batch; return `{"stored": N, "bytes": N}`.

    A batch cut short keeps (and records) the members before the cut, then raises Invalid.
    """
    apps.get(rack, app)
    stored: list[tuple[str, int]] = []
    try:
        with tarfile.open(fileobj=body, mode="r|") as batch:
            for member in iter(batch.next, None):
                batch.members.clear()  # type: ignore[attr-defined]  # a stream keeps every header otherwise
                stored.append(_store(rack, app, batch, member))
    except (tarfile.TarError, EOFError) as exc:
        raise Invalid(
            f"the contents upload was cut short after {len(stored)} contents ({exc}): send the rest"
        ) from None
    finally:
        if stored:
            with rack.db.transaction() as conn:
                sql.add_contents(conn, app=app, contents=stored)
            metrics.add_upload_bytes(rack, sum(size for _, size in stored))
    return {"stored": len(stored), "bytes": sum(size for _, size in stored)}


def _store(rack: Rack, app: str, batch: tarfile.TarFile, member: tarfile.TarInfo) -> tuple[str, int]:
    sha = member.name
    if not tree.SHA256.fullmatch(sha) or not member.isfile():
        raise Invalid(f"a contents batch holds only files named by their sha256, not {member.name[:80]!r}")
    limit = rack.settings.extract_max_bytes
    if member.size > limit:
        raise Invalid(f"content {sha} is {member.size} bytes, more than the limit of {limit}")
    data = batch.extractfile(member)
    assert data is not None  # a regular file member has data
    rack.store.put_stream(key(app, sha), cast(BinaryIO, _Checked(cast(BinaryIO, data), sha, member.size)))
    return sha, member.size


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


def open_content(rack: Rack, app: str, sha256: str) -> BinaryIO:
    """Open a stored content; FileNotFoundError when it is gone."""
    return rack.store.open(key(app, sha256))


def tree_json(entries: list[tree.Entry]) -> bytes:
    """The body a client sends for a tree (for tests and tools that list a tree themselves)."""
    return json.dumps({"files": [_wire(e) for e in entries]}).encode()


def _wire(entry: tree.Entry) -> dict:
    return {("type" if k == "kind" else k): v for k, v in entry.as_json().items()}

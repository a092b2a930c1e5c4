"""Send a folder as a content-addressed source: hash each file, upload only the contents the rack lacks.

The rack answers a listing of the tree (path, type, mode, size, sha256) with the contents it lacks; those go
up in batches (uncompressed tars of contents named by their sha256), and the same listing then gets the
tree's `manifest://` URL to build from. A batch cut short keeps what arrived whole, so asking again
resumes where the upload stopped.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import tarfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import click

from cli.client import RackClient, check, short
from cli.source import CHUNK, source_files

if TYPE_CHECKING:  # imported when a build uploads: `convox --version` starts sooner
    import requests

BATCH_BYTES = 16 * 1024 * 1024  # a batch's contents; each is one request, so a cut loses at most this
BATCH_FILES = 1000
STREAMS = 2  # batches in flight at once: the rack stores each batch on a process of its own
ATTEMPTS = 5  # asks for the missing contents before giving up on an upload that keeps being cut
Progress = Callable[[int, int], None]


@dataclass
class Tree:
    """A folder's build context as the rack's listing, with where each content is on disk."""

    root: str = ""
    entries: list[dict] = field(default_factory=list)
    paths: dict[str, str] = field(default_factory=dict)  # sha256 -> a file holding it
    sizes: dict[str, int] = field(default_factory=dict)  # sha256 -> size
    files: int = 0
    size: int = 0  # bytes in all files
    hashed: int = 0  # files read to hash them (the others' sha256 came from the cache)

    def body(self) -> bytes:
        return json.dumps({"files": self.entries}, separators=(",", ":")).encode()


@dataclass
class Sent:
    """What an upload moved: `files` of `total_files` contents, `size` of `total_size` bytes."""

    url: str
    files: int
    total_files: int
    size: int
    total_size: int

    def summary(self) -> str:
        return (
            f"sent {self.files:,} of {self.total_files:,} files,"
            f" {human(self.size)} of {human(self.total_size)}"
        )


def human(n: float) -> str:
    """A size in decimal units, as people say them: 12 KB, 101 MB."""
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" or n >= 10 else f"{n:.1f} {unit}"
        n /= 1000
    return str(n)


class HashCache:
    """Remembered sha256s of files by path, size, mtime, inode and ctime, as git's index does, in the config
    folder. The ctime catches a rewrite that put the old mtime back (`touch -r`, tools keeping times):
    only the kernel sets it.

    A file changed within RACY seconds of its hashing is not remembered: its mtime could repeat.
    """

    RACY = 2.0
    LIMIT = 400_000  # entries kept; beyond it the oldest scans' are dropped

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.entries: dict[str, list] = {}
        self.fresh: dict[str, list] = {}  # what this scan saw, remembered next time
        if path is not None:
            try:
                self.entries = json.loads(path.read_text())
            except (OSError, ValueError):
                self.entries = {}

    def sha256(self, full: str, st: os.stat_result) -> str | None:
        known = self.entries.get(full)
        if isinstance(known, list) and known[:4] == [st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns]:
            self.fresh[full] = known
            return known[4]
        return None

    def remember(self, full: str, st: os.stat_result, sha: str) -> None:
        if time.time() - st.st_mtime > self.RACY:
            self.fresh[full] = [st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns, sha]

    def save(self) -> None:
        if self.path is None:
            return
        kept = {k: v for k, v in self.entries.items() if k not in self.fresh}
        room = max(0, self.LIMIT - len(self.fresh))
        merged = {**dict(list(kept.items())[max(0, len(kept) - room) :] if room else []), **self.fresh}
        same = len(merged) == len(self.entries)
        if same and all(a == b for a, b in zip(merged.items(), self.entries.items(), strict=True)):
            return  # nothing new, and this scan's entries already last: the file would be the same
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_suffix(".tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as out:
                out.write(json.dumps(merged, separators=(",", ":")))  # json.dump's chunks are slower
            os.replace(tmp, self.path)
        except OSError:
            pass  # a cache that cannot be written costs only the next scan's hashing


def scan(directory: str | os.PathLike, *, manifest: str = "convox.yml", cache: Path | None = None) -> Tree:
    """List and hash what `convox build` sends from the folder (the same `.dockerignore` selection).

    With `cache` (a file), sha256s of files unchanged since an earlier scan are taken from it.
    """
    root = os.path.realpath(directory)
    if not os.path.isdir(root):
        raise NotADirectoryError(f"not a folder: {directory}")
    known = HashCache(cache)
    tree = Tree(root=root)
    for rel in source_files(root, manifest=manifest):
        full = os.path.join(root, rel)
        st = os.lstat(full)
        entry: dict = {"path": rel, "mode": stat.S_IMODE(st.st_mode), "mtime": max(0, int(st.st_mtime))}
        if stat.S_ISLNK(st.st_mode):
            entry.update(type="link", link=os.readlink(full))
        elif stat.S_ISDIR(st.st_mode):
            entry.update(type="dir")
        elif stat.S_ISREG(st.st_mode):
            sha = known.sha256(full, st)
            if sha is None:
                with open(full, "rb") as fh:
                    sha = hashlib.file_digest(fh, "sha256").hexdigest()
                known.remember(full, st, sha)
                tree.hashed += 1
            entry.update(type="file", size=st.st_size, sha256=sha)
            tree.paths.setdefault(sha, full)
            tree.sizes[sha] = st.st_size
            tree.files += 1
            tree.size += st.st_size
        else:
            continue  # sockets and fifos: docker's archive leaves them out too
        tree.entries.append(entry)
    known.save()
    return tree


class Batch:
    """A tar of contents named by their sha256, streamed from disk with a known length."""

    def __init__(self, tree: Tree, shas: list[str], progress: Callable[[int], None]) -> None:
        self.tree, self.shas, self.progress = tree, shas, progress
        blocks = sum(-(-tree.sizes[sha] // tarfile.BLOCKSIZE) for sha in shas)
        self.size = (len(shas) + blocks) * tarfile.BLOCKSIZE + 2 * tarfile.BLOCKSIZE

    def __len__(self) -> int:
        return self.size

    def __iter__(self) -> Iterator[bytes]:
        for sha in self.shas:
            size = self.tree.sizes[sha]
            info = tarfile.TarInfo(sha)
            info.size, info.mode = size, 0o600
            yield info.tobuf(format=tarfile.USTAR_FORMAT)
            left = size
            with open(self.tree.paths[sha], "rb") as fh:
                while left:
                    # a file that changed since it was hashed still fills its slot; the rack refuses it
                    chunk = fh.read(min(CHUNK, left)) or b"\0" * min(CHUNK, left)
                    left -= len(chunk)
                    self.progress(len(chunk))
                    yield chunk
            if size % tarfile.BLOCKSIZE:
                yield b"\0" * (tarfile.BLOCKSIZE - size % tarfile.BLOCKSIZE)
        yield b"\0" * (2 * tarfile.BLOCKSIZE)


def batches(tree: Tree, shas: list[str], *, limit: int = 0) -> Iterator[list[str]]:
    """Group contents into batches of at most BATCH_BYTES (and `limit`, the rack's upload limit) each."""
    most = min(BATCH_BYTES, limit) if limit else BATCH_BYTES
    batch: list[str] = []
    size = 2 * tarfile.BLOCKSIZE
    for sha in shas:
        member = tarfile.BLOCKSIZE * (1 + -(-tree.sizes[sha] // tarfile.BLOCKSIZE))
        if batch and (size + member > most or len(batch) >= BATCH_FILES):
            yield batch
            batch, size = [], 2 * tarfile.BLOCKSIZE
        batch.append(sha)
        size += member
    if batch:
        yield batch


def too_large(tree: Tree, limit: int) -> tuple[str, int] | None:
    """The first file too large to go up in one batch under the rack's upload limit, with its size."""
    for sha, size in tree.sizes.items():
        if limit and size + 3 * tarfile.BLOCKSIZE > limit:
            return os.path.relpath(tree.paths[sha], tree.root), size
    return None


def send(
    client: RackClient, app: str, tree: Tree, *, progress: Progress | None = None, limit: int = 0
) -> Sent | None:
    """Upload the contents the rack lacks and return the tree's URL; None when the rack has no such routes."""
    first: list[str] | None = None
    listing = tree.body()  # the same bytes each time it is asked for
    for _ in range(ATTEMPTS):
        answer = _post_tree(client, app, listing)
        if answer is None:
            return None
        missing = answer.get("missing") or []
        if first is None:
            first = list(missing)
        if answer.get("Url"):
            return Sent(
                url=answer["Url"],
                files=len(first),
                total_files=tree.files,
                size=sum(tree.sizes[sha] for sha in first),
                total_size=tree.size,
            )
        unknown = [sha for sha in missing if sha not in tree.sizes]
        if unknown:
            raise click.ClickException(f"the rack asked for content it was not sent: {unknown[0]}")
        _upload(client, app, tree, missing, progress, limit)
    raise click.ClickException(f"the upload to {client.endpoint.url} was cut {ATTEMPTS} times; try again")


def _post_tree(client: RackClient, app: str, listing: bytes) -> dict | None:
    resp = _request(client, f"/apps/{app}/sources", listing, "application/json")
    if resp is None:
        raise click.ClickException(f"the rack at {client.endpoint.url} did not answer the source listing")
    if resp.status_code in (404, 405):  # a rack without content-addressed sources (the app was checked)
        return None
    check(resp)
    return resp.json()


def _upload(
    client: RackClient, app: str, tree: Tree, missing: list[str], progress: Progress | None, limit: int
) -> None:
    """Send the missing contents, STREAMS batches at a time; a cut batch ends its stream (the caller asks
    again what is missing, so the contents that arrived whole are not sent twice)."""
    from concurrent.futures import ThreadPoolExecutor

    import requests

    total = sum(tree.sizes[sha] for sha in missing)
    done = [0]
    lock = threading.Lock()
    pending = list(batches(tree, missing, limit=limit))
    pending.reverse()

    def count(n: int) -> None:
        with lock:
            done[0] += n
            if progress:
                progress(done[0], total)

    def stream() -> None:
        own = requests.Session()  # a session of its own: requests' sessions are not shared across threads
        own.auth, own.headers = client.session.auth, client.session.headers
        try:
            while True:
                with lock:
                    if not pending:
                        return
                    shas = pending.pop()
                body = Batch(tree, shas, count)
                resp = _request(client, f"/apps/{app}/contents", body, "application/x-tar", session=own)
                if resp is None:
                    return
                check(resp)
        finally:
            own.close()

    with ThreadPoolExecutor(max_workers=STREAMS) as pool:
        for running in [pool.submit(stream) for _ in range(min(STREAMS, len(pending)))]:
            running.result()


def _request(
    client: RackClient, path: str, body, content_type: str, *, session: requests.Session | None = None
) -> requests.Response | None:
    """POST a body; None when the connection was cut (so the caller resumes), errors as ClickException."""
    import requests

    try:
        return (session or client.session).post(
            client.url(path), data=body, headers={"Content-Type": content_type}, timeout=(30, 600)
        )
    except (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError) as exc:
        click.echo(f"(upload cut: {short(exc)}; resuming)", err=True)
        return None

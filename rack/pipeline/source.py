"""Fetch a build's source into a private directory: extract an uploaded tarball or clone a git URL."""

from __future__ import annotations

import contextlib
import errno
import functools
import gzip
import os
import posixpath
import re
import signal
import stat
import subprocess
import tarfile
import tempfile
import time
import zlib
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import IO, BinaryIO, cast
from urllib.parse import urlsplit

from rack import giturl
from rack.errors import BuildPlatformError, BuildUserError
from rack.reasons import Reason
from rack.scrub import scrub

CODE = Reason.SOURCE
TRUNCATED = "the source archive is truncated or not a .tgz"
_CHUNK = 64 * 1024
RATIO_FLOOR = 64 * 1024 * 1024  # a small archive may always expand this far, however well it compressed
_MAX_HEADER = 1024 * 1024  # pax and GNU long-name headers are read into memory whole, so cap them
_MAX_NAME = 3072  # leaves room for the root under PATH_MAX, so realpath() sees the real tree
_HEADER_TYPES = (b"x", b"g", b"X", b"L", b"K")  # pax (x, g, Solaris X) and GNU long name (L) and link (K)
_SPECIAL = {tarfile.CHRTYPE: "a char device", tarfile.BLKTYPE: "a block device", tarfile.FIFOTYPE: "a fifo"}
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_SHA = re.compile(r"[0-9a-f]{7,40}")
STOP_POLL = 0.25  # seconds between looks at `stop` while git runs
_DATA_FILTER = getattr(tarfile, "data_filter", None)  # PEP 706, in Python 3.11.4 and later
Stop = Callable[[], bool]


_refuse = functools.partial(BuildUserError, CODE)


def _bad(name: str, problem: str) -> BuildUserError:
    name = name if len(name) <= 200 else name[:200] + "..."
    return _refuse(f"source archive entry {name!r} {problem}")


class _Member(tarfile.TarInfo):
    """A tar header that caps metadata blocks and tells a truncated archive from a finished one."""

    @classmethod
    def frombuf(cls, buf, encoding, errors):
        try:
            return super().frombuf(buf, encoding, errors)
        except tarfile.HeaderError:
            if len(buf) == tarfile.BLOCKSIZE and not buf.strip(b"\0"):
                raise  # the end-of-archive marker: tarfile stops there
            # tarfile silently stops at a bad or missing header after the first one; we refuse
            raise _refuse(TRUNCATED) from None

    def _proc_member(self, tar):
        if self.type in _HEADER_TYPES and self.size > _MAX_HEADER:
            raise _refuse(f"the source archive has a {self.size}-byte metadata header (limit {_MAX_HEADER})")
        try:
            return super()._proc_member(tar)
        except tarfile.HeaderError:  # a bad pax record, or a metadata header with no member after it
            raise _refuse(TRUNCATED) from None


class _Peeked:
    """A stream whose first bytes were already read to sniff its format."""

    def __init__(self, raw: BinaryIO) -> None:
        self.raw, self.head = raw, raw.read(2)

    def read(self, size: int = -1) -> bytes:
        head, self.head = self.head, b""
        return head or self.raw.read(size)


class _Body:
    """Read an archive decompressed, counting bytes so a compression bomb stops early."""

    def __init__(self, raw: BinaryIO, limit: int, message: str, stop: Stop | None = None) -> None:
        src = _Peeked(raw)
        self._read = (
            gzip.GzipFile(fileobj=cast(BinaryIO, src), mode="rb").read
            if src.head == b"\x1f\x8b"
            else src.read
        )
        self._limit, self._message, self._count = limit, message, 0
        self._stop = stop

    def read(self, size: int = -1) -> bytes:
        # every byte of the archive passes here (tarfile reads 10 KiB records), so a stop is seen promptly
        if self._stop is not None and self._stop():
            raise BuildUserError(Reason.CANCELLED, "extracting the source was stopped")
        try:
            data = self._read(size)
        except (EOFError, gzip.BadGzipFile, zlib.error):
            raise _refuse(TRUNCATED) from None
        self._count += len(data)
        if self._count > self._limit:
            raise _refuse(self._message)
        return data


def extract_tarball(
    fileobj: BinaryIO,
    dest: Path,
    *,
    max_bytes: int,
    max_entries: int,
    max_depth: int = 256,
    max_ratio: int | None = None,
    packed_size: int | None = None,
    stop: Stop | None = None,
) -> None:
    """Extract a .tgz (or plain .tar) stream into the empty directory dest, refusing anything unsafe."""
    # on a refusal dest may hold part of the tree: the caller owns dest and removes it. `stop` is asked
    # before each read of the archive; true ends the extraction with BuildUserError(Reason.CANCELLED, ...)
    with _empty_root(dest) as (root, root_fd):
        extraction = _Extraction(
            root, root_fd, max_bytes=max_bytes, max_entries=max_entries, max_depth=max_depth
        )
        if max_ratio and packed_size is not None and max(max_ratio * packed_size, RATIO_FLOOR) < max_bytes:
            # a compression bomb is refused once it passes a multiple of its own size, before the disk fills
            extraction.max_bytes = max(max_ratio * packed_size, RATIO_FLOOR)
            extraction.too_big = (
                f"the source archive of {packed_size} bytes expands to more than {max_ratio} times its size"
                f" ({extraction.max_bytes} bytes)"
            )
        extraction.run(fileobj, stop)


@contextlib.contextmanager
def _empty_root(dest: Path, *, empty: bool = True) -> Iterator[tuple[str, int]]:
    """Open the (empty) directory dest for extraction: its real path and a descriptor of it."""
    root = os.path.realpath(dest)
    root_fd = os.open(root, _DIR_FLAGS)
    try:
        if empty and os.listdir(root_fd):
            raise ValueError(f"{dest} must be an empty directory")
        yield root, root_fd
    finally:
        os.close(root_fd)


def extract_members(
    members: Iterable[tarfile.TarInfo],
    open_member: Callable[[tarfile.TarInfo], BinaryIO],
    dest: Path,
    *,
    max_bytes: int,
    max_entries: int,
    max_depth: int = 256,
    stop: Stop | None = None,
    replace: bool = False,
    links: Iterable[str] = (),
) -> None:
    """Write members (tar headers, from an archive or made from a source tree) into the empty dest.

    The same rules as for a tarball's members hold; a regular file's bytes come from `open_member`. With
    `replace`, dest may hold an earlier tree, whose symlinks that stay are named in `links` (checked
    again with the written ones). A member with `mtime_ns` gets that exact mtime.
    """
    with _empty_root(dest, empty=not replace) as (root, root_fd):
        extraction = _Extraction(
            root, root_fd, max_bytes=max_bytes, max_entries=max_entries, max_depth=max_depth
        )
        extraction.symlinks.extend((path, path) for path in links)
        source = _Opener(open_member)
        for count, member in enumerate(members, 1):
            if stop is not None and stop():
                raise BuildUserError(Reason.CANCELLED, "assembling the source was stopped")
            if count > max_entries:
                raise _refuse(f"the source has more than {max_entries} entries")
            extraction.add_named(cast(tarfile.TarFile, source), member)
        extraction.check_links()


def check_members(members: Iterable[tarfile.TarInfo], *, max_depth: int = 256) -> None:
    """Refuse a member that extraction would refuse by its name, type or link target, writing nothing."""
    extraction = _Extraction(
        "/nonexistent-source-root", -1, max_bytes=0, max_entries=0, max_depth=max_depth, lexical=True
    )
    for member in members:
        parts = extraction.check(member)
        extraction.kinds["/".join(parts)] = "dir" if member.isdir() else "file"


class _Opener:
    """Stands in for a TarFile when members come from elsewhere: their bytes from a function."""

    def __init__(self, open_member: Callable[[tarfile.TarInfo], BinaryIO]) -> None:
        self.extractfile = open_member


class _Extraction:
    """Write archive members under one root, never following a link and never leaving the root."""

    def __init__(
        self,
        root: str,
        root_fd: int,
        *,
        max_bytes: int,
        max_entries: int,
        max_depth: int,
        lexical: bool = False,
    ) -> None:
        self.root, self.root_fd, self.max_bytes, self.max_entries = root, root_fd, max_bytes, max_entries
        self.max_depth = max_depth
        # Checking names alone (no tree on disk): the standard filter's path checks are then lexical, and
        # `_parts` has refused whatever they would in a file's or a folder's name; only links are left to it.
        self.lexical = lexical
        self.too_big = f"the source archive is larger than {max_bytes} bytes when extracted"
        self.total = 0
        self.kinds: dict[str, str] = {}  # archive path -> "dir" | "file" | "link"
        self.symlinks: list[tuple[str, str]] = []

    def run(self, fileobj: BinaryIO, stop: Stop | None = None) -> None:
        slack = self.max_entries * 4 * tarfile.BLOCKSIZE + _MAX_HEADER  # for headers, padding, metadata
        body = _Body(fileobj, self.max_bytes + slack, self.too_big, stop)
        try:
            with tarfile.open(fileobj=cast(BinaryIO, body), mode="r|", tarinfo=_Member) as tar:
                for count, member in enumerate(iter(tar.next, None), 1):
                    tar.members.clear()  # type: ignore[attr-defined]  # a stream keeps every header otherwise, and pax headers can be big
                    if count > self.max_entries:
                        raise _refuse(f"the source archive has more than {self.max_entries} entries")
                    self.add_named(tar, member)
            while body.read(_CHUNK):  # to the end, so gzip checks its length and CRC
                pass
        except tarfile.ReadError:
            raise _refuse(TRUNCATED) from None
        self.check_links()

    def add_named(self, tar: tarfile.TarFile, member: tarfile.TarInfo) -> None:
        try:
            self.add(tar, member)
        except OSError as exc:
            if exc.errno != errno.ENAMETOOLONG:
                raise
            raise _bad(member.name, "has a name that is too long") from None

    def check_links(self) -> None:
        # links are checked again against the finished tree: a later entry can change where one points
        for path, name in self.symlinks:
            full = os.path.join(self.root, path)
            if os.path.islink(full) and os.path.commonpath([os.path.realpath(full), self.root]) != self.root:
                raise _bad(name, "is a symlink that points outside the source")

    def check(self, member: tarfile.TarInfo) -> list[str]:
        """Return the member's path components, or refuse it with a message naming it."""
        name, target = member.name, member.linkname
        if not (member.isfile() or member.isdir() or member.issym() or member.islnk()) or member.issparse():
            kind = (
                "a sparse file"
                if member.issparse()
                else _SPECIAL.get(member.type, f"of type {member.type!r}")
            )
            raise _bad(name, f"is {kind}; only files, directories and links are allowed")
        parts = _parts(name, name)
        if len(parts) > self.max_depth:
            raise _bad(name, f"is {len(parts)} levels deep; the limit is {self.max_depth}")
        if member.issym():
            resolved = posixpath.normpath(posixpath.join(*parts[:-1], target)) if target else ".."
            if target.startswith("/") or resolved == ".." or resolved.startswith("../"):
                raise _bad(name, f"is a symlink to {target!r}, outside the source")
        elif member.islnk():
            source = "/".join(_parts(target, name))
            if source == "/".join(parts) or self.kinds.get(source) != "file":
                raise _bad(name, f"is a hard link to {target!r}, which is not a file earlier in the archive")
        if _DATA_FILTER is not None and not (self.lexical and (member.isfile() or member.isdir())):
            # Python 3.11.4+; Debian 12's 3.11.2 has only our own checks above
            try:
                _DATA_FILTER(member, self.root)  # the standard checks too, in case ours miss one
            except tarfile.FilterError as exc:
                raise _bad(name, f"is unsafe: {exc}") from None
        return parts

    def add(self, tar: tarfile.TarFile, member: tarfile.TarInfo) -> None:
        parts, name = self.check(member), member.name
        if not parts:
            return  # "./", the root itself
        path = "/".join(parts)
        if member.isdir():
            os.close(self.open_dir(parts, name))
            self.kinds[path] = "dir"
            return
        parent = self.open_dir(parts[:-1], name)
        try:
            try:  # a later entry replaces an earlier one of the same name, as tar does
                os.unlink(parts[-1], dir_fd=parent)
            except FileNotFoundError:
                pass
            except (IsADirectoryError, PermissionError):
                raise _bad(name, "would replace a directory") from None
            if member.issym():
                os.symlink(member.linkname, parts[-1], dir_fd=parent)
                self.symlinks.append((path, name))
            elif member.islnk():
                source = _parts(member.linkname, name)
                where = self.open_dir(source[:-1], name)
                try:
                    os.link(source[-1], parts[-1], src_dir_fd=where, dst_dir_fd=parent, follow_symlinks=False)
                finally:
                    os.close(where)
            else:
                self.write(tar, member, parent, parts[-1])
            self.kinds[path] = "link" if member.issym() else "file"
        finally:
            os.close(parent)

    def open_dir(self, parts: list[str], name: str) -> int:
        """Open (creating as needed) the directory at parts, refusing to pass through a link or a file."""
        fd = os.dup(self.root_fd)
        for i, part in enumerate(parts):
            try:
                with contextlib.suppress(FileExistsError):
                    os.mkdir(part, 0o755, dir_fd=fd)
                child = os.open(part, _DIR_FLAGS, dir_fd=fd)
            except OSError as exc:
                if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
                    raise
                where, mode = (
                    "/".join(parts[: i + 1]),
                    os.stat(part, dir_fd=fd, follow_symlinks=False).st_mode,
                )
                kind = f"the symlink {where!r}" if stat.S_ISLNK(mode) else f"{where!r}, which is a file"
                raise _bad(name, f"is inside {kind}") from None
            finally:
                os.close(fd)
            fd = child
        return fd

    def write(self, tar: tarfile.TarFile, member: tarfile.TarInfo, parent: int, leaf: str) -> None:
        if member.size > self.max_bytes - self.total:
            raise _refuse(self.too_big)
        data = tar.extractfile(member)
        if data is None:  # a regular file member always has data; anything else was refused above
            raise _bad(member.name, "has no content")
        with data, os.fdopen(os.open(leaf, _FILE_FLAGS, 0o600, dir_fd=parent), "wb") as out:
            self.copy(data, out, member.size)
            # tarfile's data filter rule: no setuid/setgid/sticky, no group/other write, owner rw
            mode = (member.mode & 0o755) | 0o600
            os.fchmod(out.fileno(), mode if mode & 0o100 else mode & ~0o111)
            out.flush()  # before utime, or the last write would set mtime to now
            with contextlib.suppress(OverflowError, ValueError):  # a nonsense mtime is not worth failing on
                if (ns := getattr(member, "mtime_ns", None)) is not None:
                    os.utime(out.fileno(), ns=(ns, ns))
                else:
                    os.utime(out.fileno(), (member.mtime, member.mtime))

    def copy(self, data: IO[bytes], out: IO[bytes], size: int) -> None:
        """Copy a member's `size` bytes within the size limit: in the kernel when they come from a file."""
        try:
            source = data.fileno()  # a stored content (a tree's file); an archive member has none
        except (AttributeError, OSError, ValueError):
            source = -1
        if source < 0:
            while chunk := data.read(_CHUNK):
                self.total += len(chunk)
                if self.total > self.max_bytes:
                    raise _refuse(self.too_big)
                out.write(chunk)
            return
        left = size  # a content may sit amid others (a pack): copy its own bytes only
        while left and (
            sent := os.sendfile(
                out.fileno(), source, None, min(_CHUNK * 64, left, self.max_bytes - self.total + 1)
            )
        ):
            left -= sent
            self.total += sent
            if self.total > self.max_bytes:
                raise _refuse(self.too_big)


def _parts(name: str, entry: str) -> list[str]:
    """Split an archive path into components, refusing absolute paths and `..`."""
    if "\0" in name:
        raise _bad(entry, "has a NUL byte in a path")
    if name.startswith("/"):
        raise _bad(entry, f"has an absolute path {name!r}")
    parts = [part for part in name.split("/") if part not in ("", ".")]
    if len(name) > _MAX_NAME or any(len(os.fsencode(part)) > 255 for part in parts):
        raise _bad(entry, "has a name that is too long")
    if ".." in parts:
        raise _bad(entry, f"has a '..' path {name!r}")
    return parts


ASKPASS = """#!/bin/sh
# git asks "Username for '...'" then "Password for '...'": answer from the environment, never argv.
case "$1" in
    Username*) printf '%s\\n' "$RACK_GIT_USERNAME" ;;
    *) printf '%s\\n' "$RACK_GIT_PASSWORD" ;;
esac
"""


def clone_git(
    url: str,
    dest: Path,
    *,
    timeout: int,
    allow_local: bool = False,
    allow_private: bool = False,
    credentials: tuple[str, str] | None = None,
    stop: Stop | None = None,
) -> str:
    """Clone `repo[#ref]` into dest, check out the ref (branch, tag or sha) and return the commit sha.

    Credentials (given, or in the URL's `user:password@`) reach git through an askpass program and its
    environment, never its command line. Unless `allow_private`, a host that resolves to a loopback,
    link-local or private address is refused before git connects, and git is pinned to the address
    checked (no second lookup that could answer otherwise).
    """
    # local repositories (file:// or a path) need allow_local: a user's URL must not read the worker's disk.
    # `stop` is asked every STOP_POLL seconds while git runs; true kills git (a CANCELLED error)
    repo, _, ref = url.partition("#")
    if repo.startswith("-") or ref.startswith("-"):
        raise _refuse(f"git url {scrub(url)!r} is refused: neither repository nor ref may start with '-'")
    local = repo.startswith(("file://", "/"))
    if not (repo.startswith(("https://", "http://")) or (allow_local and local)):
        raise _refuse(f"git url {scrub(url)!r} is not supported: use https://host/repo.git#ref")
    repo, user, password = giturl.split_credentials(repo) if not local else (repo, "", "")
    if credentials is not None:
        user, password = credentials
    protocols = "https:http:file" if local else "https:http"  # also binds submodules and redirects
    env = {**os.environ, "GIT_TERMINAL_PROMPT": "0", "GIT_ALLOW_PROTOCOL": protocols, "LC_ALL": "C"}
    config: list[str] = []
    if not local and not allow_private:
        config += ["-c", f"http.curloptResolve={_checked_address(repo)}", "-c", "http.followRedirects=false"]
    deadline = time.monotonic() + timeout
    with tempfile.TemporaryDirectory(prefix="rack-git-") as helper:
        if user or password:
            askpass = Path(helper) / "askpass"
            askpass.write_text(ASKPASS)
            askpass.chmod(0o700)
            env.update(GIT_ASKPASS=str(askpass), RACK_GIT_USERNAME=user, RACK_GIT_PASSWORD=password)
            # git asks for the username only if the URL has none: name it (it is no secret) in the URL.
            repo = giturl.with_credentials(repo, user, "") if user else repo

        def git(*args: str, cwd: Path | None = None) -> str:
            return _git([*config, *args], cwd=cwd, env=env, deadline=deadline, timeout=timeout, stop=stop)

        if _SHA.fullmatch(ref):  # a sha may be any commit, so a shallow clone of the tip would not have it
            git("clone", "--quiet", "--no-checkout", "--", repo, str(dest))
            git("checkout", "--quiet", "--detach", ref, cwd=dest)
        else:
            git(
                "clone", "--quiet", "--depth", "1", *(["--branch", ref] if ref else []), "--", repo, str(dest)
            )
        return git("rev-parse", "HEAD", cwd=dest).strip()


def _checked_address(repo: str) -> str:
    """Refuse a repository whose host is not public; return git's `host:port:address` pin for it."""
    try:
        address, problem = giturl.private_address(repo)
    except ValueError as exc:
        raise _refuse(f"git url {scrub(repo)!r}: {exc}") from None
    if problem:
        raise _refuse(
            f"git url {scrub(repo)!r} is refused: {problem}; only public hosts are cloned "
            "(RACK_GIT_ALLOW_PRIVATE=true lets a rack on a trusted network clone from private ones)"
        )
    parts = urlsplit(repo)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return f"{parts.hostname}:{port}:{f'[{address}]' if ':' in address else address}"


def _git(
    args: list[str],
    *,
    cwd: Path | None,
    env: dict[str, str],
    deadline: float,
    timeout: int,
    stop: Stop | None,
) -> str:
    """Run one git command, killing its whole process group if the deadline passes or `stop` says so."""
    step = args[0]
    try:
        proc = subprocess.Popen(
            ["git", *args], cwd=cwd, env=env, start_new_session=True,
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip
    except FileNotFoundError:
        raise BuildPlatformError(Reason.GIT, "git is not installed on this worker") from None
    while True:
        left = deadline - time.monotonic()
        try:  # communicate() keeps what it read when it times out, so waiting in slices loses no output
            out, err = proc.communicate(timeout=max(min(left, STOP_POLL) if stop else left, 0.001))
            break
        except subprocess.TimeoutExpired:
            if stop is not None and stop():
                _kill(proc)
                raise BuildUserError(Reason.CANCELLED, f"git {step} was stopped") from None
            if time.monotonic() >= deadline:
                _kill(proc)
                raise _refuse(f"git {step} timed out after {timeout}s") from None
    if proc.returncode:
        tail = "\n".join(err.decode(errors="replace").strip().splitlines()[-10:])
        raise _refuse(f"git {step} failed: {scrub(tail) or f'exit status {proc.returncode}'}")
    return out.decode(errors="replace")


def _kill(proc: subprocess.Popen) -> None:
    # git's helpers (remote-https, index-pack) hold the pipes too, so kill the group, not just git
    os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate()

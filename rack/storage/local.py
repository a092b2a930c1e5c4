"""The local-folder object store: the embedded default."""

from __future__ import annotations

import errno
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, cast

from rack.errors import Conflict, Invalid
from rack.storage import CHUNK, count_chunk, key_size_problem, shown

# What a read meets where no object is: nothing there, a folder there or above, a name the system refuses.
_NO_OBJECT = {errno.ENOENT, errno.ENOTDIR, errno.EISDIR, errno.ENAMETOOLONG, errno.ELOOP}


class _Slice:
    """`length` bytes of an open file from where it stands; its descriptor too, for the kernel to copy."""

    def __init__(self, fh: BinaryIO, length: int) -> None:
        self._fh, self.left = fh, length

    def read(self, size: int = -1) -> bytes:
        data = self._fh.read(self.left if size is None or size < 0 else min(size, self.left))
        self.left -= len(data)
        return data

    def fileno(self) -> int:
        return self._fh.fileno()

    def close(self) -> None:
        self._fh.close()

    def __enter__(self) -> _Slice:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class LocalStore:
    """Objects as files under one folder; writes land in a temp file renamed into place.

    Keys map to paths, so a key cannot be both an object and a folder of objects: reads of a folder find
    nothing, and writes that would need one to be the other raise Conflict.
    """

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        self._tmp = self.root / ".incoming"

    def _path(self, key: str) -> Path:
        parts = [p for p in key.split("/") if p]
        if not parts or any(p in (".", "..") for p in parts) or parts[0] == ".incoming":
            raise ValueError(f"bad object key {shown(key)}")
        return self.root.joinpath(*parts)

    def _stat(self, key: str) -> os.stat_result | None:
        """The object's file status, or None when no object is stored under `key`."""
        if key_size_problem(key):
            return None
        try:
            st = os.stat(self._path(key))
        except OSError as exc:
            if exc.errno in _NO_OBJECT:
                return None
            raise
        return st if stat.S_ISREG(st.st_mode) else None

    def put_stream(self, key: str, stream: BinaryIO, *, limit: int | None = None) -> int:
        path = self._path(key)
        if problem := key_size_problem(key):
            raise Invalid(f"object key {shown(key)} is too long: {problem}")
        self._check_free(key, path)  # before reading a body that could not be kept
        self._tmp.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self._tmp)
        written = 0
        try:
            with os.fdopen(fd, "wb") as out:
                while chunk := stream.read(CHUNK):
                    written = count_chunk(written, chunk, limit)
                    out.write(chunk)
            self._place(key, path, tmp)
        except BaseException:
            os.unlink(tmp)
            raise
        return written

    def _check_free(self, key: str, path: Path) -> None:
        """Raise Conflict when `path` is a folder of objects or lies below an object."""
        with self._refusals(key, path):
            for above in reversed(path.relative_to(self.root).parents[:-1]):
                try:
                    if not stat.S_ISDIR(os.stat(self.root / above).st_mode):
                        raise self._conflict(key, path)
                except FileNotFoundError:
                    return
            try:
                if stat.S_ISDIR(os.stat(path).st_mode):
                    raise self._conflict(key, path)
            except FileNotFoundError:
                return

    def _place(self, key: str, path: Path, tmp: str) -> None:
        """Rename the finished upload into place, making its folders."""
        with self._refusals(key, path):
            for attempt in range(3):
                try:
                    path.parent.mkdir(parents=True, exist_ok=True)
                    os.replace(tmp, path)
                    return
                except FileNotFoundError:
                    # A delete pruned the emptied folder between our mkdir and rename: make it again.
                    if attempt == 2:
                        raise

    @contextmanager
    def _refusals(self, key: str, path: Path) -> Iterator[None]:
        """Turn the file system's refusal of a key into Invalid or Conflict."""
        try:
            yield
        except OSError as exc:
            if exc.errno == errno.ENAMETOOLONG:
                raise Invalid(f"object key {shown(key)} is too long for the object store") from exc
            if exc.errno in (errno.ENOTDIR, errno.EISDIR, errno.EEXIST, errno.ENOTEMPTY):
                raise self._conflict(key, path) from exc
            raise

    def _conflict(self, key: str, path: Path) -> Conflict:
        if path.is_dir():
            under = shown(key + "/")
            return Conflict(f"object key {shown(key)} conflicts with an existing object under {under}")
        above = path.parent
        while above != self.root and not above.is_file():
            above = above.parent
        existing = above.relative_to(self.root).as_posix() if above != self.root else "?"
        return Conflict(f"object key {shown(key)} conflicts with an existing object {shown(existing)}")

    def open(self, key: str, *, start: int = 0, length: int | None = None) -> BinaryIO:
        if key_size_problem(key):
            raise FileNotFoundError(errno.ENOENT, "no such object", key)
        try:
            fh = open(self._path(key), "rb")
        except OSError as exc:
            if exc.errno in _NO_OBJECT:
                raise FileNotFoundError(errno.ENOENT, "no such object", key) from None
            raise
        if start:
            fh.seek(start)
        return fh if length is None else cast(BinaryIO, _Slice(fh, length))

    def exists(self, key: str) -> bool:
        return self._stat(key) is not None

    def size(self, key: str) -> int:
        st = self._stat(key)
        if st is None:
            raise FileNotFoundError(errno.ENOENT, "no such object", key)
        return st.st_size

    def delete(self, key: str) -> None:
        if self._stat(key) is None:
            return  # nothing there, or a folder of other objects: either way no object to remove
        path = self._path(key)
        path.unlink(missing_ok=True)
        self._prune(path.parent)

    def _prune(self, folder: Path) -> None:
        """Remove folders left empty, up to the root, so they no longer stand in the way of a key."""
        while folder != self.root and self.root in folder.parents:
            try:
                folder.rmdir()
            except OSError:
                return  # not empty (or already gone): whatever is above is in use too
            folder = folder.parent

    def delete_prefix(self, prefix: str) -> None:
        shutil.rmtree(self._path(prefix), ignore_errors=True)

    def list_keys(self, folder: str, *, starting: str = "", limit: int) -> list[str]:
        top = self._path(folder)
        found = []
        for dirpath, dirnames, filenames in os.walk(top):
            dirnames.sort()
            for name in filenames:
                key = f"{folder}/{Path(dirpath, name).relative_to(top).as_posix()}"
                if key.startswith(f"{folder}/{starting}"):
                    found.append(key)
        return sorted(found)[:limit]

"""The local-folder object store: the embedded default."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import BinaryIO

from rack.storage import CHUNK, count_chunk


class LocalStore:
    """Objects as files under one folder; writes land in a temp file renamed into place."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        self._tmp = self.root / ".incoming"

    def _path(self, key: str) -> Path:
        parts = [p for p in key.split("/") if p]
        if not parts or any(p in (".", "..") for p in parts) or parts[0] == ".incoming":
            raise ValueError(f"bad object key {key!r}")
        return self.root.joinpath(*parts)

    def put_stream(self, key: str, stream: BinaryIO, *, limit: int | None = None) -> int:
        path = self._path(key)
        self._tmp.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self._tmp)
        written = 0
        try:
            with os.fdopen(fd, "wb") as out:
                while chunk := stream.read(CHUNK):
                    written = count_chunk(written, chunk, limit)
                    out.write(chunk)
            path.parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp, path)
        except BaseException:
            os.unlink(tmp)
            raise
        return written

    def open(self, key: str) -> BinaryIO:
        return open(self._path(key), "rb")

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def size(self, key: str) -> int:
        return self._path(key).stat().st_size

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def delete_prefix(self, prefix: str) -> None:
        shutil.rmtree(self._path(prefix), ignore_errors=True)

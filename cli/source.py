"""Package a folder as the rack expects it: a gzipped tarball honouring `.dockerignore`, on disk."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

CHUNK = 1024 * 1024


def read_dockerignore(root: str | os.PathLike) -> list[str]:
    """Read the root `.dockerignore` as Docker does: trimmed lines, no blanks, no `#` comments."""
    path = Path(root) / ".dockerignore"
    if not path.is_file():
        return []
    lines = (line.strip() for line in path.read_text(encoding="utf-8", errors="replace").splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def source_files(root: str | os.PathLike, *, manifest: str = "convox.yml") -> list[str]:
    """List the paths (files and folders, relative to `root`) that go into the build context.

    Docker's rules come from the docker SDK's matcher. Like `docker build`, the root Dockerfile and
    `.dockerignore` are always sent; so is the manifest, without which the rack could not build at all.
    """
    patterns = read_dockerignore(root)
    keep = [f"!{manifest}"] if manifest and not os.path.isabs(manifest) else []
    from docker.utils.build import exclude_paths  # imported when packaging: keeps other commands quick

    return sorted(exclude_paths(str(root), [*patterns, *keep]))


def package(directory: str | os.PathLike, *, manifest: str = "convox.yml") -> BinaryIO:
    """Write the folder's build context as a .tgz to an anonymous temp file, rewound; the caller closes it."""
    root = os.path.realpath(directory)
    if not os.path.isdir(root):
        raise NotADirectoryError(f"not a folder: {directory}")
    fh = tempfile.TemporaryFile(prefix="convox-source-", suffix=".tgz")
    try:
        # tarfile streams each member from disk into the gzip writer: memory stays flat for any size.
        from docker.utils.build import create_archive

        create_archive(root, files=source_files(root, manifest=manifest), fileobj=fh, gzip=True)
    except BaseException:
        fh.close()
        raise
    fh.seek(0)
    return fh


def size_of(fh: BinaryIO) -> int:
    return os.fstat(fh.fileno()).st_size


class Upload:
    """A request body read from an open file in chunks, with a known length and a progress callback.

    requests sends an iterable with `__len__` as a plain `Content-Length` body, chunk by chunk, so the
    rack can refuse an oversized upload before reading it and can spot a truncated one.
    """

    def __init__(self, fh: BinaryIO, *, progress: Callable[[int, int], None] | None = None) -> None:
        self.fh = fh
        self.size = size_of(fh)
        self.progress = progress

    def __len__(self) -> int:
        return self.size

    def __iter__(self) -> Iterator[bytes]:
        self.fh.seek(0)
        sent = 0
        while chunk := self.fh.read(CHUNK):
            sent += len(chunk)
            if self.progress:
                self.progress(sent, self.size)
            yield chunk

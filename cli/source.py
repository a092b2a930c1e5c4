"""Package a folder as the rack expects it: a tarball honouring `.dockerignore`, on disk.

The tarball is gzipped at level 1 (several times faster than tarfile's level 9 for a few percent more
bytes), or not compressed at all when a sample of the files shows the data does not compress (archives,
media, binaries): the rack reads both.
"""

from __future__ import annotations

import gzip
import os
import tempfile
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

from cli import dockerignore

CHUNK = 1024 * 1024
GZIP_LEVEL = 1
SAMPLE_FILES = 16  # files sampled to tell whether the tree compresses
SAMPLE_BYTES = 64 * 1024  # read from the start of each sampled file
INCOMPRESSIBLE = 0.9  # a sample that level 1 shrinks by less than 10% goes uncompressed


def read_dockerignore(root: str | os.PathLike) -> list[str]:
    """Read the root `.dockerignore` as Docker does: trimmed lines, no blanks, no `#` comments."""
    path = Path(root) / ".dockerignore"
    if not path.is_file():
        return []
    lines = (line.strip() for line in path.read_text(encoding="utf-8", errors="replace").splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def source_files(root: str | os.PathLike, *, manifest: str = "convox.yml") -> list[str]:
    """List the paths (files and folders, relative to `root`, sorted) that go into the build context.

    Docker's rules, chosen as the docker SDK chooses them (`cli.dockerignore`). Like `docker build`, the
    root Dockerfile and `.dockerignore` are always sent; so is the manifest, without which the rack could
    not build at all.
    """
    patterns = read_dockerignore(root)
    keep = [f"!{manifest}"] if manifest and not os.path.isabs(manifest) else []
    return dockerignore.walk(str(root), [*patterns, *keep])


def package(directory: str | os.PathLike, *, manifest: str = "convox.yml") -> BinaryIO:
    """Write the folder's build context as a .tgz to an anonymous temp file, rewound; the caller closes it."""
    root = os.path.realpath(directory)
    if not os.path.isdir(root):
        raise NotADirectoryError(f"not a folder: {directory}")
    fh = tempfile.TemporaryFile(prefix="convox-source-", suffix=".tgz")
    try:
        # tarfile streams each member from disk into the writer: memory stays flat for any size.
        from docker.utils.build import create_archive

        files = source_files(root, manifest=manifest)
        out = _Gzip(fh) if compresses(root, files) else _Plain(fh)
        create_archive(root, files=files, fileobj=out, gzip=False)
        out.close()
    except BaseException:
        fh.close()
        raise
    fh.seek(0)
    return fh


def compresses(root: str, files: list[str]) -> bool:
    """Tell whether gzip is worth its time: compress a sample taken from files spread over the tree."""
    regular = [
        path for path in files if os.path.isfile(p := os.path.join(root, path)) and not os.path.islink(p)
    ]
    step = max(1, len(regular) // SAMPLE_FILES)
    sample = bytearray()
    for path in regular[::step][:SAMPLE_FILES]:
        try:
            with open(os.path.join(root, path), "rb") as f:
                sample += f.read(SAMPLE_BYTES)
        except OSError:
            continue
    if not sample:
        return True
    return len(zlib.compress(bytes(sample), GZIP_LEVEL)) < INCOMPRESSIBLE * len(sample)


class _Plain:
    """The temp file as tarfile's output; create_archive rewinds it at the end, which package does anyway."""

    def __init__(self, fh: BinaryIO) -> None:
        self.fh = fh

    def write(self, data: bytes) -> int:
        return self.fh.write(data)

    def tell(self) -> int:
        return self.fh.tell()

    def seek(self, *_args: int) -> None:
        pass

    def close(self) -> None:
        self.fh.flush()


class _Gzip(_Plain):
    """A level-1 gzip stream into the temp file (tarfile's own `w:gz` always uses level 9)."""

    def __init__(self, fh: BinaryIO) -> None:
        super().__init__(fh)
        self.gz = gzip.GzipFile(fileobj=fh, mode="wb", compresslevel=GZIP_LEVEL, mtime=0)

    def write(self, data: bytes) -> int:
        return self.gz.write(data)

    def tell(self) -> int:
        return self.gz.tell()

    def close(self) -> None:
        self.gz.close()
        super().close()


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

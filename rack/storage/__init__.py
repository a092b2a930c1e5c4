"""Object storage: one small contract with a local-folder and an S3 implementation."""

from __future__ import annotations

from typing import BinaryIO, Protocol
from urllib.parse import urlparse

from rack.config import Settings
from rack.errors import TooLarge

CHUNK = 1024 * 1024
MAX_PART_BYTES = 255  # a file name's limit on common filesystems (S3 allows longer; the contract does not)


class Store(Protocol):
    """Where uploads, stored logs and exports live; keys are `/`-separated relative paths.

    A key that is only a prefix of other keys (`app/tmp` beside `app/tmp/x.tgz`) is no object: reads
    find nothing there. A key with a part over MAX_PART_BYTES, or longer than the backend holds, can hold
    no object: `put_stream` raises Invalid and reads find nothing. Failures of the backend itself raise
    Unavailable, never the backend's own exceptions.
    """

    def put_stream(self, key: str, stream: BinaryIO, *, limit: int | None = None) -> int:
        """Store everything `stream` yields under `key` atomically; return the size.

        Raises TooLarge past `limit` bytes, leaving nothing visible under `key`; an error raised by
        `stream` itself propagates unchanged.
        """

    def open(self, key: str, *, start: int = 0, length: int | None = None) -> BinaryIO:
        """Open a stored object (or its `length` bytes from `start`) for reading; FileNotFoundError when
        there is none."""

    def exists(self, key: str) -> bool:
        """Whether an object is stored under `key`."""

    def size(self, key: str) -> int:
        """The stored object's size; FileNotFoundError when there is none."""

    def delete(self, key: str) -> None:
        """Remove an object; removing a missing one is not an error."""

    def delete_prefix(self, prefix: str) -> None:
        """Remove every object whose key starts with `prefix/`."""

    def list_keys(self, folder: str, *, starting: str = "", limit: int) -> list[str]:
        """The keys below `folder/` that start with `folder/starting`, sorted, at most `limit` of them."""


def key_size_problem(key: str, *, max_bytes: int | None = None) -> str | None:
    """Say why `key` is too long to hold an object (a part, or all of it past `max_bytes`); None if not."""
    parts = [len(part.encode("utf-8", "surrogatepass")) for part in key.split("/")]
    if max(parts) > MAX_PART_BYTES:
        return f"a part of it is {max(parts)} bytes long, at most {MAX_PART_BYTES}"
    size = sum(parts) + len(parts) - 1
    if max_bytes is not None and size > max_bytes:
        return f"it is {size} bytes long, at most {max_bytes}"
    return None


def shown(key: str, *, width: int = 60) -> str:
    """Quote a key for a message, cut short in the middle when it is long."""
    if len(key) > width:
        key = f"{key[: width // 2]}…{key[-(width // 2) :]}"
    return repr(key)


def count_chunk(written: int, chunk: bytes, limit: int | None) -> int:
    """Add a chunk's length to the running total, raising TooLarge past the limit."""
    written += len(chunk)
    if limit is not None and written > limit:
        raise TooLarge(f"upload is larger than the limit of {limit} bytes")
    return written


def open_store(settings: Settings) -> Store:
    """Pick the backend named by the `storage` setting (`file:///path` or `s3://bucket/prefix`)."""
    url = urlparse(settings.storage)
    if url.scheme == "file":
        from rack.storage.local import LocalStore

        return LocalStore(url.path)
    if url.scheme == "s3":
        from rack.storage.s3 import S3Store

        return S3Store(
            bucket=url.netloc, prefix=url.path.strip("/"), endpoint_url=settings.s3_endpoint_url or None
        )
    raise ValueError(f"RACK_STORAGE must be file:///path or s3://bucket/prefix, got {settings.storage!r}")

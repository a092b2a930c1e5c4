"""Object storage: one small contract with a local-folder and an S3 implementation."""

from __future__ import annotations

from typing import BinaryIO, Protocol
from urllib.parse import urlparse

from rack.config import Settings
from rack.errors import TooLarge

CHUNK = 1024 * 1024


class Store(Protocol):
    """Where uploads, stored logs and exports live; keys are `/`-separated relative paths."""

    def put_stream(self, key: str, stream: BinaryIO, *, limit: int | None = None) -> int:
        """Store everything `stream` yields under `key` atomically; return the size.

        Raises TooLarge past `limit` bytes, leaving nothing visible under `key`.
        """

    def open(self, key: str) -> BinaryIO:
        """Open a stored object for reading; FileNotFoundError when there is none."""

    def exists(self, key: str) -> bool: ...

    def size(self, key: str) -> int:
        """The stored object's size; FileNotFoundError when there is none."""

    def delete(self, key: str) -> None:
        """Remove an object; removing a missing one is not an error."""

    def delete_prefix(self, prefix: str) -> None:
        """Remove every object whose key starts with `prefix/`."""


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

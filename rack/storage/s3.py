"""The S3 object store (through boto3), for racks whose workers run on several hosts."""

from __future__ import annotations

import errno
import io
from typing import BinaryIO, cast

import boto3
import botocore.config
import botocore.exceptions
from boto3.s3.transfer import TransferConfig

from rack.errors import Invalid, RackError, Unavailable
from rack.scrub import scrub
from rack.storage import CHUNK, count_chunk, key_size_problem, shown

# Multipart parts of 8 MiB, two at a time: memory stays flat whatever the object's size.
TRANSFER = TransferConfig(multipart_threshold=8 * CHUNK, multipart_chunksize=8 * CHUNK, max_concurrency=2)
# boto's defaults wait 60 s to connect, five times over: give up on a dead endpoint within seconds instead.
# Checksums only where S3 asks for them, as boto did before 1.36: S3-compatible stores (MinIO, moto) give
# multipart objects whole-object checksums that boto's default validation of every full read rejects.
CLIENT = botocore.config.Config(
    connect_timeout=5,
    read_timeout=60,
    retries={"mode": "standard", "max_attempts": 3},
    request_checksum_calculation="when_required",
    response_checksum_validation="when_required",
)
MAX_KEY_BYTES = 1024  # S3's limit for a whole key, prefix included
_MISSING = {"404", "NoSuchKey", "NotFound"}
# Connection refused, reset or closed, timeouts, a body cut short: the store is not there to answer.
_UNREACHABLE = (
    botocore.exceptions.ConnectionError,  # EndpointConnectionError, ConnectTimeoutError, proxy, TLS
    botocore.exceptions.HTTPClientError,  # ReadTimeoutError, ConnectionClosedError, ResponseStreamingError
    botocore.exceptions.IncompleteReadError,
)


def _code(exc: botocore.exceptions.ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code") or "")


def _missing(key: str) -> FileNotFoundError:
    return FileNotFoundError(errno.ENOENT, "no such object", key)


class _Counted:
    """Fill each read fully (s3transfer takes a short read for the end), raising TooLarge past `limit`."""

    def __init__(self, stream: BinaryIO, limit: int | None) -> None:
        self.stream, self.limit, self.written = stream, limit, 0

    def read(self, size: int = -1) -> bytes:
        want = size if size and size > 0 else CHUNK
        parts, got = [], 0
        while got < want:
            chunk = self.stream.read(want - got)
            if not chunk:
                break
            parts.append(chunk)
            got += len(chunk)
        data = b"".join(parts)
        self.written = count_chunk(self.written, data, self.limit)
        return data


class _Body(io.RawIOBase):
    """An object's streaming body whose read errors are the store's (Unavailable), not botocore's."""

    def __init__(self, body, store: S3Store) -> None:
        self._body, self._store = body, store

    def readable(self) -> bool:
        return True

    def read(self, size: int | None = -1) -> bytes:
        try:
            return self._body.read(size if size is not None and size >= 0 else None)
        except botocore.exceptions.BotoCoreError as exc:
            raise self._store._unavailable(exc, "read an object") from exc

    def readinto(self, buffer) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def close(self) -> None:
        if not self.closed:
            self._body.close()
        super().close()


class S3Store:
    """Objects under `s3://bucket/prefix/`; uploads are multipart, so nothing shows until complete.

    Every boto error becomes a storage one here: a missing object FileNotFoundError, anything else
    Unavailable, whose message names the error code but never repeats what S3 said (or the credentials).
    """

    def __init__(
        self, *, bucket: str, prefix: str = "", endpoint_url: str | None = None, client=None
    ) -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.client = client or boto3.client("s3", endpoint_url=endpoint_url, config=CLIENT)

    def _key(self, key: str) -> str:
        key = key.strip("/")
        return f"{self.prefix}/{key}" if self.prefix else key

    def _size_problem(self, key: str) -> str | None:
        """Why S3 could hold no object under `key` (the contract's part limit, or its own key limit)."""
        if problem := key_size_problem(key):
            return problem
        size = len(self._key(key).encode("utf-8", "surrogatepass"))
        if size > MAX_KEY_BYTES:
            return f"with the store's prefix it is {size} bytes long, at most {MAX_KEY_BYTES}"
        return None

    def _unavailable(self, exc: Exception, doing: str) -> Unavailable:
        """The Unavailable error for a boto error met while trying to do `doing` ("read an object")."""
        if isinstance(exc, botocore.exceptions.ClientError):
            code = _code(exc) or "unknown"
            if code == "NoSuchBucket":
                return Unavailable(f"the object store's bucket {self.bucket!r} does not exist")
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            return Unavailable(f"the object store refused to {doing}: {code} (HTTP {status or '?'})")
        text = scrub(str(exc))
        if isinstance(exc, _UNREACHABLE):
            return Unavailable(f"the object store is unreachable: {text}")
        return Unavailable(f"the object store failed to {doing}: {type(exc).__name__}: {text}")

    def _check_bucket(self) -> None:
        """Raise Unavailable when the bucket is missing (a HEAD's bare 404 cannot tell it from a key)."""
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except botocore.exceptions.ClientError as exc:
            if _code(exc) in _MISSING or _code(exc) == "NoSuchBucket":
                raise Unavailable(f"the object store's bucket {self.bucket!r} does not exist") from None
            # Anything else (no permission to look at the bucket): the object is missing, as S3 said.
        except botocore.exceptions.BotoCoreError as exc:
            raise self._unavailable(exc, "find its bucket") from exc

    def put_stream(self, key: str, stream: BinaryIO, *, limit: int | None = None) -> int:
        if problem := self._size_problem(key):
            raise Invalid(f"object key {shown(key)} is too long: {problem}")
        body = _Counted(stream, limit)
        try:
            self.client.upload_fileobj(body, self.bucket, self._key(key), Config=TRANSFER)
        except RackError:
            raise
        except Exception as exc:
            cause = exc.__cause__ or exc.__context__
            while cause is not None:  # s3transfer may wrap the error raised by our reader: that one wins
                if isinstance(cause, RackError):
                    raise cause from None
                cause = cause.__cause__ or cause.__context__
            if isinstance(exc, (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError)):
                raise self._unavailable(exc, "store an object") from exc
            raise
        return body.written

    def open(self, key: str, *, start: int = 0, length: int | None = None) -> BinaryIO:
        if self._size_problem(key):
            raise _missing(key)
        if length == 0:
            self.size(key)  # FileNotFoundError when there is none
            return io.BytesIO(b"")
        ranged = {}
        if start or length is not None:
            ranged["Range"] = f"bytes={start}-{'' if length is None else start + length - 1}"
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=self._key(key), **ranged)
        except botocore.exceptions.ClientError as exc:
            if _code(exc) in _MISSING:
                raise _missing(key) from None
            raise self._unavailable(exc, "read an object") from exc
        except botocore.exceptions.BotoCoreError as exc:
            raise self._unavailable(exc, "read an object") from exc
        return cast(BinaryIO, _Body(response["Body"], self))

    def exists(self, key: str) -> bool:
        try:
            self.size(key)
        except FileNotFoundError:
            return False
        return True

    def size(self, key: str) -> int:
        if self._size_problem(key):
            raise _missing(key)
        try:
            return self.client.head_object(Bucket=self.bucket, Key=self._key(key))["ContentLength"]
        except botocore.exceptions.ClientError as exc:
            if _code(exc) not in _MISSING:
                raise self._unavailable(exc, "look up an object") from exc
        except botocore.exceptions.BotoCoreError as exc:
            raise self._unavailable(exc, "look up an object") from exc
        self._check_bucket()
        raise _missing(key)

    def delete(self, key: str) -> None:
        if self._size_problem(key):
            return
        try:
            self.client.delete_object(Bucket=self.bucket, Key=self._key(key))
        except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as exc:
            raise self._unavailable(exc, "delete an object") from exc

    def list_keys(self, folder: str, *, starting: str = "", limit: int) -> list[str]:
        own = len(self._key("x")) - 1  # the store's own prefix, dropped from each key
        try:
            paginator = self.client.get_paginator("list_objects_v2")
            keys: list[str] = []
            for page in paginator.paginate(Bucket=self.bucket, Prefix=f"{self._key(folder)}/{starting}"):
                keys += [o["Key"][own:] for o in page.get("Contents", [])]
                if len(keys) >= limit:
                    break
        except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as exc:
            raise self._unavailable(exc, "list objects") from exc
        return sorted(keys)[:limit]

    def delete_prefix(self, prefix: str) -> None:
        try:
            paginator = self.client.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=self.bucket, Prefix=self._key(prefix) + "/"):
                keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
                if keys:
                    done = self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": keys})
                    if errors := done.get("Errors"):
                        codes = sorted({e.get("Code") or "unknown" for e in errors})
                        raise Unavailable(f"the object store refused to delete objects: {', '.join(codes)}")
        except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as exc:
            raise self._unavailable(exc, "delete objects") from exc

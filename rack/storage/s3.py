"""The S3 object store (through boto3), for racks whose workers run on several hosts."""

from __future__ import annotations

from typing import BinaryIO

import boto3
import botocore.exceptions
from boto3.s3.transfer import TransferConfig

from rack.errors import TooLarge, Unavailable
from rack.storage import CHUNK, count_chunk

# Multipart parts of 8 MiB, two at a time: memory stays flat whatever the object's size.
TRANSFER = TransferConfig(multipart_threshold=8 * CHUNK, multipart_chunksize=8 * CHUNK, max_concurrency=2)


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


class S3Store:
    """Objects under `s3://bucket/prefix/`; uploads are multipart, so nothing shows until complete."""

    def __init__(
        self, *, bucket: str, prefix: str = "", endpoint_url: str | None = None, client=None
    ) -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.client = client or boto3.client("s3", endpoint_url=endpoint_url)

    def _key(self, key: str) -> str:
        key = key.strip("/")
        return f"{self.prefix}/{key}" if self.prefix else key

    def put_stream(self, key: str, stream: BinaryIO, *, limit: int | None = None) -> int:
        body = _Counted(stream, limit)
        try:
            self.client.upload_fileobj(body, self.bucket, self._key(key), Config=TRANSFER)
        except TooLarge:
            raise
        except Exception as exc:
            cause = exc
            while cause is not None:  # s3transfer may wrap the error raised by our reader
                if isinstance(cause, TooLarge):
                    raise cause from None
                cause = cause.__cause__ or cause.__context__
            if isinstance(exc, botocore.exceptions.EndpointConnectionError):
                raise Unavailable(f"the object store is unreachable: {exc}") from exc
            raise
        return body.written

    def open(self, key: str) -> BinaryIO:
        try:
            return self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"]
        except self.client.exceptions.NoSuchKey:
            raise FileNotFoundError(key) from None

    def exists(self, key: str) -> bool:
        try:
            self.size(key)
        except FileNotFoundError:
            return False
        return True

    def size(self, key: str) -> int:
        try:
            return self.client.head_object(Bucket=self.bucket, Key=self._key(key))["ContentLength"]
        except botocore.exceptions.ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                raise FileNotFoundError(key) from None
            raise

    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self._key(key))

    def delete_prefix(self, prefix: str) -> None:
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=self._key(prefix) + "/"):
            keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
            if keys:
                self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": keys})

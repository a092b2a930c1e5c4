"""One contract, run against the local-folder store and the S3 store (moto's server on loopback)."""

from __future__ import annotations

import io

import boto3
import pytest

from rack.errors import TooLarge
from rack.storage.local import LocalStore
from rack.storage.s3 import S3Store


@pytest.fixture(scope="module")
def s3_endpoint():
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path, monkeypatch):
    if request.param == "local":
        return LocalStore(tmp_path / "objects")
    endpoint = request.getfixturevalue("s3_endpoint")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    bucket = f"rack-{tmp_path.name.lower().replace('_', '-')[-40:]}".strip("-")
    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=bucket)
    return S3Store(bucket=bucket, prefix="racks/test", endpoint_url=endpoint)


def test_put_open_exists_size_delete(store):
    assert store.put_stream("app/tmp/a.tgz", io.BytesIO(b"hello world")) == 11
    assert store.exists("app/tmp/a.tgz")
    assert store.size("app/tmp/a.tgz") == 11
    with store.open("app/tmp/a.tgz") as fh:
        assert fh.read() == b"hello world"
    store.delete("app/tmp/a.tgz")
    assert not store.exists("app/tmp/a.tgz")
    store.delete("app/tmp/a.tgz")  # deleting a missing object is fine


def test_missing_object_is_file_not_found(store):
    with pytest.raises(FileNotFoundError):
        store.open("app/nope")
    with pytest.raises(FileNotFoundError):
        store.size("app/nope")


def test_overwrite_replaces_whole_object(store):
    store.put_stream("app/k", io.BytesIO(b"first version, long"))
    store.put_stream("app/k", io.BytesIO(b"second"))
    with store.open("app/k") as fh:
        assert fh.read() == b"second"


def test_over_the_limit_leaves_nothing_and_keeps_the_old_object(store):
    store.put_stream("app/k", io.BytesIO(b"keep me"))
    with pytest.raises(TooLarge):
        store.put_stream("app/k", io.BytesIO(b"x" * 20_000_000), limit=10_000_000)
    with pytest.raises(TooLarge):
        store.put_stream("app/new", io.BytesIO(b"x" * 101), limit=100)
    assert not store.exists("app/new")
    with store.open("app/k") as fh:
        assert fh.read() == b"keep me"


def test_failing_reader_leaves_no_partial_object(store):
    class Broken(io.RawIOBase):
        def __init__(self):
            self.sent = 0

        def read(self, size=-1):
            if self.sent > 9_000_000:
                raise ConnectionResetError("client went away")
            self.sent += 1_000_000
            return b"z" * 1_000_000

    with pytest.raises(ConnectionResetError):
        store.put_stream("app/partial", Broken())
    assert not store.exists("app/partial")


def test_multipart_sized_object_round_trips(store):
    data = bytes(range(256)) * (40 * 1024 * 4)  # 40 MiB: several multipart parts on S3
    store.put_stream("app/big", io.BytesIO(data))
    assert store.size("app/big") == len(data)
    with store.open("app/big") as fh:
        assert fh.read() == data


def test_delete_prefix_removes_only_that_app(store):
    store.put_stream("one/a", io.BytesIO(b"1"))
    store.put_stream("one/b/c", io.BytesIO(b"2"))
    store.put_stream("one-more/a", io.BytesIO(b"3"))
    store.delete_prefix("one")
    assert not store.exists("one/a")
    assert not store.exists("one/b/c")
    assert store.exists("one-more/a")


def test_short_reads_store_everything(store):
    """A socket-backed body returns fewer bytes than asked; none may be lost."""

    class Trickle(io.RawIOBase):
        def __init__(self, total):
            self.left = total

        def read(self, size=-1):
            n = min(self.left, 65_536, size if size > 0 else 65_536)
            self.left -= n
            return b"t" * n

    total = 20 * 1024 * 1024 + 123
    assert store.put_stream("app/trickle", Trickle(total)) == total
    assert store.size("app/trickle") == total

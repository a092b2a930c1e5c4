"""One contract, run against the local-folder store and the S3 store (moto's server on loopback)."""

from __future__ import annotations

import io
import socket
from types import SimpleNamespace

import boto3
import botocore.exceptions
import pytest
from botocore.config import Config

from rack.errors import Conflict, Invalid, TooLarge, Unavailable
from rack.storage.local import LocalStore
from rack.storage.s3 import CLIENT, S3Store


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


def test_a_range_of_an_object_reads_those_bytes_only(store):
    store.put_stream("app/pack", io.BytesIO(b"0123456789"))
    with store.open("app/pack", start=3, length=4) as fh:
        assert fh.read() == b"3456" and fh.read() == b""
    with store.open("app/pack", start=7) as fh:
        assert fh.read() == b"789"
    with store.open("app/pack", start=2, length=0) as fh:
        assert fh.read() == b""
    with pytest.raises(FileNotFoundError):
        store.open("app/nope", start=1, length=2)


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


def test_list_keys_of_one_app_by_prefix(store):
    for key in ("one/tmp/b.tgz", "one/tmp/a.tgz", "one/build/B1/logs", "one-more/tmp/a.tgz"):
        store.put_stream(key, io.BytesIO(b"x"))
    assert store.list_keys("one", limit=10) == ["one/build/B1/logs", "one/tmp/a.tgz", "one/tmp/b.tgz"]
    assert store.list_keys("one", starting="tmp/", limit=10) == ["one/tmp/a.tgz", "one/tmp/b.tgz"]
    assert store.list_keys("one", starting="tmp/a", limit=10) == ["one/tmp/a.tgz"]
    assert store.list_keys("one", limit=1) == ["one/build/B1/logs"]
    assert store.list_keys("nobody", limit=10) == []


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


# --- keys that cannot hold an object -----------------------------------------------------------


def test_a_prefix_of_other_keys_is_not_an_object(store):
    """A local folder, an S3 prefix: either way no object lives there, and deleting it removes nothing."""
    store.put_stream("app/tmp/x.tgz", io.BytesIO(b"x"))
    with pytest.raises(FileNotFoundError):
        store.open("app/tmp")
    with pytest.raises(FileNotFoundError):
        store.size("app/tmp")
    assert not store.exists("app/tmp")
    store.delete("app/tmp")
    assert store.exists("app/tmp/x.tgz")


@pytest.mark.parametrize(
    "key",
    [
        "app/" + "a" * 256,  # one part longer than a file name may be
        "app/" + "é" * 128,  # 128 characters, 256 bytes
        "app/" + "/".join(["b" * 200] * 25),  # parts that fit, 5,024 bytes in all: past PATH_MAX too
    ],
    ids=["long-part", "long-multibyte-part", "long-key"],
)
def test_overlong_keys_hold_no_object(store, key):
    with pytest.raises(Invalid, match="is too long"):
        store.put_stream(key, io.BytesIO(b"x"))
    with pytest.raises(FileNotFoundError):
        store.open(key)
    with pytest.raises(FileNotFoundError):
        store.size(key)
    assert not store.exists(key)
    store.delete(key)


def test_s3_keys_fit_its_1024_bytes_prefix_included(s3_endpoint):
    client = _one_try_client(s3_endpoint)
    client.create_bucket(Bucket="rack-long-prefix")
    store = S3Store(bucket="rack-long-prefix", prefix="p" * 900, client=client)
    fits = "app/" + "/".join(["k" * 50] * 2)  # 900 + 1 + 105 bytes
    store.put_stream(fits, io.BytesIO(b"x"))
    assert store.exists(fits)
    too_long = "app/" + "/".join(["k" * 50] * 3)  # 900 + 1 + 156 bytes
    with pytest.raises(Invalid, match="at most 1024"):
        store.put_stream(too_long, io.BytesIO(b"x"))
    assert not store.exists(too_long)
    with pytest.raises(FileNotFoundError):
        store.open(too_long)


def _files(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def test_local_key_under_an_object_or_over_a_folder_is_a_conflict(tmp_path):
    """A file cannot also be a folder: such keys are refused, leaving nothing behind."""
    root = tmp_path / "objects"
    store = LocalStore(root)
    store.put_stream("app/tmp/x.tgz", io.BytesIO(b"x"))
    below = r"'app/tmp/x.tgz/y' conflicts with an existing object 'app/tmp/x.tgz'"
    with pytest.raises(Conflict, match=below):
        store.put_stream("app/tmp/x.tgz/y", io.BytesIO(b"y"))
    with pytest.raises(Conflict, match=below.replace("/y'", "/y/z'")):
        store.put_stream("app/tmp/x.tgz/y/z", io.BytesIO(b"z"))
    with pytest.raises(Conflict, match=r"'app/tmp' conflicts with an existing object under 'app/tmp/'"):
        store.put_stream("app/tmp", io.BytesIO(b"t"))
    assert _files(root) == ["app/tmp/x.tgz"]
    with store.open("app/tmp/x.tgz") as fh:
        assert fh.read() == b"x"


def test_local_reads_below_an_object_find_nothing(tmp_path):
    store = LocalStore(tmp_path / "objects")
    store.put_stream("app/x", io.BytesIO(b"x"))
    with pytest.raises(FileNotFoundError):
        store.open("app/x/y")
    with pytest.raises(FileNotFoundError):
        store.size("app/x/y")
    assert not store.exists("app/x/y")
    store.delete("app/x/y")
    assert store.exists("app/x")


def test_local_delete_prunes_emptied_folders(tmp_path):
    """Once its last object is gone a folder is no longer in the way of a key, as on S3."""
    root = tmp_path / "objects"
    store = LocalStore(root)
    store.put_stream("app/tmp/deep/x.tgz", io.BytesIO(b"x"))
    store.put_stream("app/tmp/other", io.BytesIO(b"o"))
    store.delete("app/tmp/deep/x.tgz")
    assert not (root / "app/tmp/deep").exists()
    assert (root / "app/tmp").is_dir()
    store.put_stream("app/tmp/deep", io.BytesIO(b"now a file"))
    assert store.size("app/tmp/deep") == 10


# --- S3 errors become storage errors at the boundary -------------------------------------------


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _one_try_client(endpoint: str):
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="test",
        aws_secret_access_key="test",
        config=CLIENT.merge(Config(retries={"mode": "standard", "max_attempts": 1})),
    )


def _every_call(store):
    """Each method of the contract, as a zero-argument call."""
    return {
        "put_stream": lambda: store.put_stream("app/k", io.BytesIO(b"data")),
        "open": lambda: store.open("app/k").read(),
        "size": lambda: store.size("app/k"),
        "exists": lambda: store.exists("app/k"),
        "delete": lambda: store.delete("app/k"),
        "delete_prefix": lambda: store.delete_prefix("app"),
    }


def test_s3_unreachable_is_unavailable_for_every_call():
    endpoint = f"http://127.0.0.1:{_closed_port()}"
    store = S3Store(bucket="b", client=_one_try_client(endpoint))
    for name, call in _every_call(store).items():
        with pytest.raises(Unavailable, match="the object store is unreachable") as info:
            call()
        assert info.value.status == 503, name


def test_s3_server_gone_after_use_is_unavailable(monkeypatch):
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    client = _one_try_client(f"http://{host}:{port}")
    client.create_bucket(Bucket="gone")
    store = S3Store(bucket="gone", client=client)
    store.put_stream("app/k", io.BytesIO(b"data"))
    assert store.exists("app/k")  # a kept-alive connection, now to be cut
    server.stop()
    for call in _every_call(store).values():
        with pytest.raises(Unavailable, match="the object store is unreachable"):
            call()


def test_s3_missing_bucket_is_a_clear_error(s3_endpoint):
    store = S3Store(bucket="no-such-bucket", client=_one_try_client(s3_endpoint))
    for call in _every_call(store).values():
        with pytest.raises(Unavailable, match="bucket 'no-such-bucket' does not exist"):
            call()


class _Refusing:
    """An S3 client that answers every call with one error."""

    def __init__(self, error):
        self.error = error

    def __getattr__(self, name):
        def call(*args, **kwargs):
            raise self.error

        return call


def test_s3_refusals_name_the_code_and_nothing_else():
    secret = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
    error = botocore.exceptions.ClientError(
        {
            "Error": {"Code": "SignatureDoesNotMatch", "Message": f"signed with {secret}"},
            "ResponseMetadata": {"HTTPStatusCode": 403},
        },
        "HeadObject",
    )
    store = S3Store(bucket="b", client=_Refusing(error))
    for name, call in _every_call(store).items():
        with pytest.raises(Unavailable, match="SignatureDoesNotMatch") as info:
            call()
        assert secret not in info.value.message, name


def test_s3_timeouts_and_dropped_connections_are_unavailable():
    for error in (
        botocore.exceptions.ConnectTimeoutError(endpoint_url="http://s3"),
        botocore.exceptions.ReadTimeoutError(endpoint_url="http://s3"),
        botocore.exceptions.ConnectionClosedError(endpoint_url="http://s3"),
        botocore.exceptions.EndpointConnectionError(endpoint_url="http://s3"),
    ):
        store = S3Store(bucket="b", client=_Refusing(error))
        for call in _every_call(store).values():
            with pytest.raises(Unavailable, match="the object store is unreachable"):
                call()


def test_s3_objects_it_would_not_delete_are_unavailable():
    class Client:
        def get_paginator(self, name):
            return SimpleNamespace(paginate=lambda **kw: [{"Contents": [{"Key": "app/a"}, {"Key": "app/b"}]}])

        def delete_objects(self, **kwargs):
            return {"Errors": [{"Key": "app/b", "Code": "AccessDenied", "Message": "nope"}]}

    with pytest.raises(Unavailable, match="refused to delete objects: AccessDenied"):
        S3Store(bucket="b", client=Client()).delete_prefix("app")


def test_s3_body_failing_mid_read_is_unavailable():
    class Body(io.RawIOBase):
        def readable(self):
            return True

        def read(self, size=-1):
            raise botocore.exceptions.ReadTimeoutError(endpoint_url="http://s3")

    class Client:
        def get_object(self, **kwargs):
            return {"Body": Body()}

    with S3Store(bucket="b", client=Client()).open("app/k") as fh, pytest.raises(Unavailable):
        fh.read(10)


def test_s3_uploads_keep_the_readers_own_error():
    """A client that goes away mid-upload is its error, not the store's."""

    class Gone(io.RawIOBase):
        def read(self, size=-1):
            raise Invalid("the upload was truncated")

    class Client:
        def upload_fileobj(self, body, *args, **kwargs):
            try:
                body.read(10)
            except Exception as exc:  # as s3transfer does: its own error, caused by the reader's
                raise botocore.exceptions.ClientError({}, "PutObject") from exc

    store = S3Store(bucket="b", client=Client())
    with pytest.raises(Invalid, match="truncated"):
        store.put_stream("app/k", Gone())


# --- a storage failure never crashes the build task --------------------------------------------


def test_storing_the_build_log_survives_any_store_failure(caplog):
    from rack.pipeline.run import _store_log

    class Failing:
        def put_stream(self, key, stream, *, limit=None):
            # Neither an OSError nor one of ours: what a store that missed a translation would raise.
            raise botocore.exceptions.ConnectionClosedError(endpoint_url="http://s3")

    class Out:
        def close(self):
            return b"the log"

    rack = SimpleNamespace(store=Failing())
    assert _store_log(rack, {"app": "myapp", "id": "BABC"}, Out()) == ""
    assert "BABC: the log could not be stored" in caplog.text

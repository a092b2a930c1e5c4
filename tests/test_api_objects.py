import io
from urllib.parse import quote

import pytest


@pytest.fixture
def myapp(client):
    assert client.post("/apps", data={"name": "myapp"}).status_code == 200
    return "myapp"


def test_upload_fetch_head_delete(client, myapp):
    resp = client.post(
        "/apps/myapp/objects/tmp/src.tgz", data=b"hello", content_type="application/octet-stream"
    )
    assert resp.status_code == 200
    assert resp.get_json() == {"Url": "object://myapp/tmp/src.tgz"}
    assert client.head("/apps/myapp/objects/tmp/src.tgz").status_code == 200
    assert client.get("/apps/myapp/objects/tmp/src.tgz").data == b"hello"
    assert client.delete("/apps/myapp/objects/tmp/src.tgz").data == b"ok\n"
    assert client.head("/apps/myapp/objects/tmp/src.tgz").status_code == 404
    assert client.delete("/apps/myapp/objects/tmp/src.tgz").status_code == 404


def test_double_slash_is_tolerated(client, myapp):
    client.post("/apps/myapp/objects/tmp/x.tgz", data=b"x")
    # Convox's builder fetches `objects//tmp/x.tgz`.
    resp = client.get("/apps/myapp/objects//tmp/x.tgz")
    assert resp.status_code == 200
    assert resp.data == b"x"


def test_empty_key_gets_a_tmp_key(client, myapp):
    url = client.post("/apps/myapp/objects/", data=b"x").get_json()["Url"]
    assert url.startswith("object://myapp/tmp/")
    assert len(url.rsplit("/", 1)[1]) == 30


@pytest.mark.parametrize("key", ["../../etc/passwd", "tmp/../../x", "a/../b", ".."])
def test_dotdot_keys_are_400(client, myapp, key, settings):
    resp = client.post(f"/apps/myapp/objects/{key}", data=b"evil")
    # werkzeug's test client does not normalise paths, so the key reaches the rack as written
    assert resp.status_code == 400, resp.data
    assert "'..'" in resp.get_json()["error"]


def test_upload_over_the_limit_is_413_and_leaves_nothing(rack, client, myapp, tmp_path):
    from dataclasses import replace

    from rack.context import Rack
    from rack_api import create_app
    from tests.helpers import basic

    small = Rack(replace(rack.settings, max_upload_bytes=1000), enqueue_build=lambda _id: None)
    c = create_app(rack=small).test_client()
    headers = basic(rack.settings.password)
    resp = c.post("/apps/myapp/objects/tmp/big.tgz", data=b"x" * 1001, headers=headers)
    assert resp.status_code == 413
    assert "limit" in resp.get_json()["error"]

    # A chunked body (no Content-Length) is stopped by counting, not trusted up front.
    resp = c.post(
        "/apps/myapp/objects/tmp/big2.tgz",
        input_stream=io.BytesIO(b"y" * 5000),
        headers=headers,
        environ_overrides={"wsgi.input_terminated": True},
    )
    assert resp.status_code == 413
    assert c.head("/apps/myapp/objects/tmp/big.tgz", headers=headers).status_code == 404
    assert c.head("/apps/myapp/objects/tmp/big2.tgz", headers=headers).status_code == 404
    leftovers = [p for p in (tmp_path / "objects").rglob("*") if p.is_file()]
    assert leftovers == []


def test_truncated_upload_leaves_no_object(client, myapp, tmp_path):
    resp = client.post(
        "/apps/myapp/objects/tmp/cut.tgz",
        input_stream=io.BytesIO(b"only-part"),
        environ_overrides={"CONTENT_LENGTH": "100"},
    )
    assert resp.status_code == 400
    assert "truncated" in resp.get_json()["error"]
    assert client.head("/apps/myapp/objects/tmp/cut.tgz").status_code == 404
    assert [p for p in (tmp_path / "objects").rglob("*") if p.is_file()] == []


def test_a_folder_of_objects_is_not_an_object(client, myapp):
    client.post("/apps/myapp/objects/tmp/x.tgz", data=b"x")
    assert client.get("/apps/myapp/objects/tmp").status_code == 404
    assert client.head("/apps/myapp/objects/tmp").status_code == 404
    assert client.delete("/apps/myapp/objects/tmp").status_code == 404
    assert client.get("/apps/myapp/objects/tmp/x.tgz").data == b"x"


def test_keys_clashing_with_stored_objects_are_409_and_leave_nothing(client, myapp, tmp_path):
    client.post("/apps/myapp/objects/tmp/x.tgz", data=b"x")
    for key in ("tmp/x.tgz/y", "tmp"):
        resp = client.post(f"/apps/myapp/objects/{key}", data=b"clash")
        assert resp.status_code == 409, resp.data
        assert "conflicts with an existing object" in resp.get_json()["error"]
    root = tmp_path / "objects"
    assert [p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()] == ["myapp/tmp/x.tgz"]
    assert client.get("/apps/myapp/objects/tmp/x.tgz").data == b"x"

    # Once the object under it is gone, the key is free again.
    client.delete("/apps/myapp/objects/tmp/x.tgz")
    assert client.post("/apps/myapp/objects/tmp", data=b"t").status_code == 200


@pytest.mark.parametrize(
    "key",
    ["tmp/" + "a" * 300, "tmp/" + "é" * 128, "/".join(["b" * 200] * 6)],
    ids=["300-char-part", "256-byte-part", "1205-byte-key"],
)
def test_overlong_keys_are_400(client, myapp, key):
    path = f"/apps/myapp/objects/{quote(key)}"
    resp = client.post(path, data=b"x")
    assert resp.status_code == 400, resp.data
    assert "at most" in resp.get_json()["error"]
    assert client.head(path).status_code == 400
    assert client.get(path).status_code == 400
    assert client.delete(path).status_code == 400


def test_the_longest_keys_allowed_work(client, myapp):
    key = "/".join(["c" * 255] * 4)  # 1,023 bytes
    path = f"/apps/myapp/objects/{key}"
    assert client.post(path, data=b"x").status_code == 200
    assert client.get(path).data == b"x"


def test_list_objects_by_prefix_as_convox_object_list(client):
    client.post("/apps", data={"name": "lister"})
    for key in ("tmp/a.tgz", "tmp/b.tgz", "other/c"):
        client.post(f"/apps/lister/objects/{key}", data=b"x")
    assert client.get("/apps/lister/objects").get_json() == ["other/c", "tmp/a.tgz", "tmp/b.tgz"]
    assert client.get("/apps/lister/objects?prefix=tmp/").get_json() == ["tmp/a.tgz", "tmp/b.tgz"]
    assert client.get("/apps/lister/objects?prefix=nope").get_json() == []
    assert client.get("/apps/lister/objects?prefix=../x").status_code == 400
    assert client.get("/apps/ghost/objects").status_code == 404
    assert client.head("/apps/lister/objects/tmp/a.tgz").status_code == 200  # ObjectExists: 2xx
    assert client.head("/apps/lister/objects/tmp/none.tgz").status_code == 404

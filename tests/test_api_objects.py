import io

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
    from tests.conftest import basic

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

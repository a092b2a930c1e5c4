"""Names are matched whole: a trailing newline (which `$` would let through) is refused everywhere."""

from __future__ import annotations

from rack import exports
from rack.builds import record


def test_an_app_name_with_a_trailing_newline_is_400(client):
    for name in ("myapp\n", "myapp\n\n", "\nmyapp"):
        resp = client.post("/apps", data={"name": name})
        assert resp.status_code == 400, name
        assert "invalid" in resp.get_json()["error"]
    assert client.get("/apps").get_json() == []
    assert client.post("/apps", data={"name": "myapp"}).status_code == 200
    assert client.get("/apps/myapp%0A").status_code == 404


def test_a_build_id_with_a_trailing_newline_is_not_found(client):
    client.post("/apps", data={"name": "myapp"})
    for path in ("/apps/myapp/builds/BABCDEFGHIJ%0A", "/apps/myapp/releases/RABCDEFGHIJ%0A"):
        resp = client.get(path)
        assert resp.status_code == 404, path
        assert "not found" in resp.get_json()["error"]


def test_a_build_arg_name_with_a_trailing_newline_is_400(client):
    client.post("/apps", data={"name": "myapp"})
    client.post("/apps/myapp/objects/tmp/src.tgz", data=b"x")
    resp = client.post(
        "/apps/myapp/builds", data={"url": "object://myapp/tmp/src.tgz", "build-args": "GOOD=1,BAD\n=2"}
    )
    assert resp.status_code == 400
    assert "invalid build arg 'BAD\\n=2'" in resp.get_json()["error"]


def test_an_image_archive_name_with_a_trailing_newline_is_not_an_image():
    assert exports.IMAGE_TAR.fullmatch("web.BABCDEFGHIJ.tar")
    assert exports.IMAGE_TAR.fullmatch("web.BABCDEFGHIJ.tar\n") is None
    assert record.ARG_NAME.fullmatch("NAME\n") is None

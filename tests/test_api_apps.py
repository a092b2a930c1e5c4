import pytest


def test_create_list_show_delete(client):
    resp = client.post("/apps", data={"name": "myapp"})
    assert resp.status_code == 200, resp.data
    assert resp.get_json()["name"] == "myapp"
    assert [a["name"] for a in client.get("/apps").get_json()] == ["myapp"]
    assert client.get("/apps/myapp").get_json()["status"] == "running"
    assert client.delete("/apps/myapp").data == b"ok\n"
    assert client.get("/apps/myapp").status_code == 404


def test_duplicate_app_is_409(client):
    client.post("/apps", data={"name": "dup"})
    resp = client.post("/apps", data={"name": "dup"})
    assert resp.status_code == 409
    assert "already exists" in resp.get_json()["error"]


@pytest.mark.parametrize(
    "name", ["", "MyApp", "1app", "app_1", "a" * 31, "x'; DROP TABLE apps; --", "../etc", "app name"]
)
def test_bad_app_names_are_400(client, name):
    resp = client.post("/apps", data={"name": name})
    assert resp.status_code == 400
    assert "invalid" in resp.get_json()["error"]


def test_unknown_app_is_404(client):
    for path in ("/apps/nope", "/apps/nope/builds", "/apps/nope/releases", "/apps/nope/objects/x"):
        resp = client.get(path)
        assert resp.status_code == 404, path
        assert resp.get_json()["error"] == "app not found: nope"


def test_name_may_come_from_the_query_string(client):
    assert client.post("/apps?name=fromquery").status_code == 200
    assert client.get("/apps/fromquery").status_code == 200


def test_delete_removes_objects_and_builds(client, rack):
    client.post("/apps", data={"name": "gone"})
    client.post("/apps/gone/objects/tmp/a.tgz", data=b"abc")
    client.delete("/apps/gone")
    client.post("/apps", data={"name": "gone"})
    assert client.head("/apps/gone/objects/tmp/a.tgz").status_code == 404


def test_build_timeout_per_app(client):
    resp = client.post("/apps", data={"name": "slow", "timeout": "900"})
    assert resp.get_json()["parameters"] == {"BuildTimeout": "900"}
    assert client.put("/apps/slow", data={"timeout": "120"}).get_json()["parameters"] == {
        "BuildTimeout": "120"
    }
    assert client.put("/apps/slow", data={"timeout": ""}).get_json()["parameters"] == {}
    for bad in ("0", "abc", "100000"):
        resp = client.put("/apps/slow", data={"timeout": bad})
        assert resp.status_code == 400
        assert "timeout must be" in resp.get_json()["error"]
    assert client.post("/apps", data={"name": "bad", "timeout": "-5"}).status_code == 400
    assert client.get("/apps/bad").status_code == 404

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


def test_a_locked_app_refuses_delete_promote_and_rollback(client, rack):
    from rack import releases

    client.post("/apps", data={"name": "locked"})
    with rack.db.transaction() as conn:
        release = releases.create_in(conn, app="locked")
        conn.cursor().execute("UPDATE releases SET manifest = 'services: {}' WHERE id = %s", (release["id"],))
    resp = client.put("/apps/locked", data={"lock": "true"})
    assert resp.status_code == 200 and resp.get_json()["locked"] is True
    assert client.get("/apps/locked").get_json()["locked"] is True
    for method, path, action in (
        ("delete", "/apps/locked", "delete"),
        ("post", f"/apps/locked/releases/{release['id']}/promote", "promote a release of"),
        ("post", f"/apps/locked/releases/{release['id']}/rollback", "roll back"),
    ):
        resp = getattr(client, method)(path)
        assert resp.status_code == 409, path
        assert resp.get_json()["error"] == (
            f"app locked is locked: can not {action} it; run `convox apps unlock locked` first"
        )
    assert client.get("/apps/locked").get_json()["release"] == ""
    assert client.put("/apps/locked", data={"lock": "false"}).get_json()["locked"] is False
    assert client.post(f"/apps/locked/releases/{release['id']}/promote").status_code == 200
    assert client.delete("/apps/locked").data == b"ok\n"


def test_parameters_that_mean_something_are_applied_and_unknown_ones_are_400(client):
    client.post("/apps", data={"name": "params"})
    resp = client.put("/apps/params", data={"parameters": "BuildTimeout=600"})
    assert resp.status_code == 200 and resp.get_json()["parameters"] == {"BuildTimeout": "600"}
    for raw, error in (
        ("BuildCpu=256&BuildLabels=x", "unknown app parameters: BuildCpu, BuildLabels (this rack knows: "),
        ("BuildTimeout=600&Foo=1", "unknown app parameter: Foo (this rack knows: BuildTimeout)"),
        ("BuildTimeout=nope", "timeout must be a whole number of seconds, got 'nope'"),
        ("garbage", "are not NAME=VALUE pairs"),
    ):
        resp = client.put("/apps/params", data={"parameters": raw})
        assert resp.status_code == 400, raw
        assert error in resp.get_json()["error"], resp.get_json()
    assert client.get("/apps/params").get_json()["parameters"] == {"BuildTimeout": "600"}  # nothing half-set
    resp = client.put("/apps/params", data={"lock": "true", "router": "x"})
    assert (resp.status_code, resp.get_json()) == (400, {"error": "unknown option: router"})
    assert client.get("/apps/params").get_json()["locked"] is False
    assert client.put("/apps/params", data={"parameters": "BuildTimeout="}).get_json()["parameters"] == {}


def test_errors_are_json_when_json_is_accepted_and_text_otherwise(client):
    for accept in (None, "*/*", "application/json", "text/html,application/json;q=0.9"):
        resp = client.get("/apps/nope", headers={"Accept": accept} if accept else {})
        assert resp.status_code == 404, accept
        assert (resp.content_type, resp.get_json()) == ("application/json", {"error": "app not found: nope"})
    for accept in ("text/plain", "text/plain, application/json;q=0.5"):
        resp = client.get("/apps/nope", headers={"Accept": accept})
        assert resp.status_code == 404
        assert resp.content_type == "text/plain; charset=utf-8"
        assert resp.data == b"app not found: nope\n"
    resp = client.get("/apps", headers={"Accept": "text/plain", "Authorization": "Basic eDp4"})
    assert (resp.status_code, resp.data) == (401, b"invalid authentication\n")
    assert resp.headers["WWW-Authenticate"] == 'Basic realm="convox"'

import pytest

from rack.sql import builds as builds_sql


@pytest.fixture
def myapp(client):
    client.post("/apps", data={"name": "myapp"})
    return "myapp"


def completed_build(rack, manifest="services:\n  web:\n    build: .\n"):
    with rack.db.transaction() as conn:
        row = builds_sql.insert(
            conn,
            id="BAAAAAAAAAA",
            app="myapp",
            source_url="",
            options={},
            description="built",
            git_sha="",
            manifest=manifest,
            status="complete",
        )
    return row["id"]


def test_env_release_then_build_release(client, rack, myapp):
    r1 = client.post("/apps/myapp/releases", data={"env": "A=1\nB=x=y z"}).get_json()
    assert r1["env"] == "A=1\nB=x=y z"
    assert r1["description"] == "env add:A add:B"
    build_id = completed_build(rack)
    r2 = client.post("/apps/myapp/releases", data={"build": build_id}).get_json()
    assert r2["build"] == build_id
    assert r2["env"] == r1["env"]  # forked from the latest release
    assert r2["manifest"].startswith("services:")
    r3 = client.post("/apps/myapp/releases", data={"env": "A=2"}).get_json()
    assert r3["description"] == "env change:A remove:B"
    assert r3["build"] == build_id
    listed = [r["id"] for r in client.get("/apps/myapp/releases").get_json()]
    assert listed == [r3["id"], r2["id"], r1["id"]]
    assert client.get(f"/apps/myapp/releases/{r2['id']}").get_json()["build"] == build_id


def test_promote_rules(client, rack, myapp):
    empty = client.post("/apps/myapp/releases", data={"env": "A=1"}).get_json()
    resp = client.post(f"/apps/myapp/releases/{empty['id']}/promote")
    assert resp.status_code == 400
    assert resp.get_json()["error"] == "can not promote a release with an empty manifest"

    build_id = completed_build(rack)
    old = client.post("/apps/myapp/releases", data={"build": build_id}).get_json()
    new = client.post("/apps/myapp/releases", data={"env": "A=2"}).get_json()
    assert client.post(f"/apps/myapp/releases/{new['id']}/promote").data == b"ok\n"
    assert client.get("/apps/myapp").get_json()["release"] == new["id"]
    resp = client.post(f"/apps/myapp/releases/{old['id']}/promote")
    assert resp.status_code == 400
    assert "try rollback" in resp.get_json()["error"]
    rolled = client.post(f"/apps/myapp/releases/{old['id']}/rollback").get_json()
    assert rolled["env"] == old["env"] and rolled["build"] == old["build"]
    assert client.get("/apps/myapp").get_json()["release"] == rolled["id"]


def test_unknown_release_and_build(client, myapp):
    assert client.get("/apps/myapp/releases/RNOSUCHRELX").status_code == 404
    assert client.post("/apps/myapp/releases/RNOSUCHRELX/promote").status_code == 404
    resp = client.post("/apps/myapp/releases", data={"build": "BNOSUCHBLDX"})
    assert resp.status_code == 404
    assert client.post("/apps/myapp/releases", data={"env": "no-equals-sign"}).status_code == 400


def test_only_a_complete_build_can_be_released(client, rack, myapp):
    with rack.db.transaction() as conn:
        builds_sql.insert(
            conn,
            id="BFAILEDBLDX",
            app="myapp",
            source_url="",
            options={},
            description="",
            git_sha="",
            manifest="services: {}",
            status="failed",
        )
    resp = client.post("/apps/myapp/releases", data={"build": "BFAILEDBLDX"})
    assert resp.status_code == 409
    assert resp.get_json()["error"] == "build BFAILEDBLDX is failed: only a complete build can be released"
    assert client.get("/apps/myapp/releases").get_json() == []

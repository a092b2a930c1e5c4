import re

import pytest

from rack.sql import builds as sql


@pytest.fixture
def source(client):
    client.post("/apps", data={"name": "myapp"})
    return client.post("/apps/myapp/objects/tmp/src.tgz", data=b"not built here").get_json()["Url"]


def test_create_records_and_enqueues_after_commit(client, source, enqueued, rack):
    resp = client.post(
        "/apps/myapp/builds",
        data={
            "url": source,
            "build-args": "A=1,B=two words",
            "description": "first",
            "no-cache": "true",
            "git-sha": "abc123",
            "manifest": "other.yml",
        },
    )
    assert resp.status_code == 200, resp.data
    build = resp.get_json()
    assert re.fullmatch(r"B[A-Z]{10}", build["id"])
    assert build["status"] == "created"
    assert build["description"] == "first"
    assert build["git-sha"] == "abc123"
    assert build["ended"] == "0001-01-01T00:00:00Z"
    assert enqueued == [build["id"]]
    with rack.db.transaction() as conn:
        stored = sql.get(conn, app="myapp", id=build["id"])
    assert stored["options"] == {
        "build_args": ["A=1", "B=two words"],
        "manifest": "other.yml",
        "no_cache": True,
        "development": False,
    }


def test_list_is_newest_first_with_limit(client, source):
    ids = [client.post("/apps/myapp/builds", data={"url": source}).get_json()["id"] for _ in range(3)]
    listed = [b["id"] for b in client.get("/apps/myapp/builds").get_json()]
    assert listed == ids[::-1]
    assert [b["id"] for b in client.get("/apps/myapp/builds?limit=2").get_json()] == ids[::-1][:2]
    assert client.get("/apps/myapp/builds?limit=abc").status_code == 400


def test_get_and_put(client, source):
    build_id = client.post("/apps/myapp/builds", data={"url": source}).get_json()["id"]
    assert client.get(f"/apps/myapp/builds/{build_id}").get_json()["id"] == build_id
    resp = client.put(
        f"/apps/myapp/builds/{build_id}",
        data={"entrypoint": "/bin/sh", "ended": "20260102.150405.000000000", "manifest": "services: {}"},
    )
    assert resp.status_code == 200, resp.data
    body = resp.get_json()
    assert body["entrypoint"] == "/bin/sh"
    assert body["ended"] == "2026-01-02T15:04:05.000000Z"
    assert client.put(f"/apps/myapp/builds/{build_id}", data={"status": "weird"}).status_code == 400
    assert client.put(f"/apps/myapp/builds/{build_id}", data={"ended": "yesterday"}).status_code == 400


@pytest.mark.parametrize("build_id", ["BNOSUCHBLDX", "B1", "x' OR '1'='1", "RABCDEFGHIJ"])
def test_unknown_build_is_404(client, source, build_id):
    resp = client.get(f"/apps/myapp/builds/{build_id}")
    assert resp.status_code == 404
    assert "build not found" in resp.get_json()["error"]


@pytest.mark.parametrize(
    ("data", "status", "message"),
    [
        ({}, 400, "url is required"),
        ({"url": "object://myapp/tmp/none.tgz"}, 404, "source object not found"),
        ({"url": "object://other/tmp/src.tgz"}, 400, "belongs to another app"),
        ({"url": "object://myapp/../../etc/passwd"}, 400, "'..'"),
        ({"url": "ftp://host/x"}, 400, "unsupported source url"),
        ({"url": "SOURCE", "build-args": "BAD NAME=1"}, 400, "invalid build arg"),
        ({"url": "SOURCE", "manifest": "../convox.yml"}, 400, "'..'"),
    ],
)
def test_bad_build_requests(client, source, enqueued, data, status, message):
    data = {k: (source if v == "SOURCE" else v) for k, v in data.items()}
    resp = client.post("/apps/myapp/builds", data=data)
    assert resp.status_code == status, resp.data
    assert message in resp.get_json()["error"]
    assert enqueued == []
    assert client.get("/apps/myapp/builds").get_json() == []


def test_broker_down_fails_the_build_and_answers_503(rack, client, source):
    def down(build_id):
        raise ConnectionError("redis is gone")

    rack.enqueue_build = down
    resp = client.post("/apps/myapp/builds", data={"url": source})
    assert resp.status_code == 503
    assert "try again" in resp.get_json()["error"]
    [build] = client.get("/apps/myapp/builds").get_json()
    assert build["status"] == "failed"
    assert build["reason"].startswith("platform:queue")

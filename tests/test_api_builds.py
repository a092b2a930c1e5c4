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
    assert build["phases"] == {}  # nothing timed before a worker runs it
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


def test_put_moves_status_only_forward(client, source, rack):
    from rack.builds import lifecycle
    from rack.db import execute
    from rack.logs.stream import BuildLog

    build_id = client.post("/apps/myapp/builds", data={"url": source}).get_json()["id"]
    assert client.put(f"/apps/myapp/builds/{build_id}", data={"status": "created"}).status_code == 200
    running = client.put(f"/apps/myapp/builds/{build_id}", data={"status": "running"}).get_json()
    assert running["status"] == "running"
    # A builder reporting through PUT is watched like a worker: silence gets it reaped.
    with rack.db.transaction() as conn:
        execute(conn, "UPDATE builds SET heartbeat = now() - interval '1 hour' WHERE id = %s", (build_id,))
    assert [b for b, _ in lifecycle.reap(rack)] == [build_id]
    resp = client.put(f"/apps/myapp/builds/{build_id}", data={"status": "running"})
    assert resp.status_code == 409
    assert resp.get_json()["error"] == f"build {build_id} is failed: it can not become running"
    assert client.put(f"/apps/myapp/builds/{build_id}", data={"status": "complete"}).status_code == 409
    assert client.put(f"/apps/myapp/builds/{build_id}", data={"status": "created"}).status_code == 409

    other = client.post("/apps/myapp/builds", data={"url": source}).get_json()["id"]
    done = client.put(f"/apps/myapp/builds/{other}", data={"status": "failed"}).get_json()
    assert done["status"] == "failed" and done["ended"] != "0001-01-01T00:00:00Z"
    assert BuildLog(rack.redis, other).last_entry().end_status == "failed"  # followers stop


@pytest.mark.parametrize(
    "value", ["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-05:00", "19000101.000000.000000000", "soon"]
)
def test_put_refuses_times_out_of_range(client, source, value):
    build_id = client.post("/apps/myapp/builds", data={"url": source}).get_json()["id"]
    resp = client.put(f"/apps/myapp/builds/{build_id}", data={"ended": value})
    assert resp.status_code == 400
    assert "invalid time" in resp.get_json()["error"]


def test_put_time_without_a_zone_is_utc(client, source):
    build_id = client.post("/apps/myapp/builds", data={"url": source}).get_json()["id"]
    resp = client.put(f"/apps/myapp/builds/{build_id}", data={"ended": "2026-01-02T03:04:05"})
    assert resp.get_json()["ended"] == "2026-01-02T03:04:05.000000Z"


def test_put_release_must_exist(client, source):
    build_id = client.post("/apps/myapp/builds", data={"url": source}).get_json()["id"]
    resp = client.put(f"/apps/myapp/builds/{build_id}", data={"release": "RNOSUCHRELX"})
    assert resp.status_code == 404


def test_logs_is_set_by_the_rack_only(client, source):
    client.post("/apps", data={"name": "other"})
    theirs = client.post("/apps/other/objects/tmp/secret.txt", data=b"the other app's data").get_json()["Url"]
    build_id = client.post("/apps/myapp/builds", data={"url": source}).get_json()["id"]
    resp = client.put(f"/apps/myapp/builds/{build_id}", data={"logs": theirs, "description": "x"})
    assert resp.status_code == 403
    assert "logs is set by the rack only" in resp.get_json()["error"]
    row = client.get(f"/apps/myapp/builds/{build_id}").get_json()
    assert (row["logs"], row["description"]) == ("", "")  # nothing of the request applied
    assert client.put(f"/apps/myapp/builds/{build_id}", data={"status": "failed"}).status_code == 200
    assert b"the other app's data" not in client.get(f"/apps/myapp/builds/{build_id}/logs").data


def test_an_external_builder_stores_and_reports_its_own_log_as_convox_s_does(client, source):
    """Convox's --external builder stores build/<ID>/logs, then PUTs ended, logs and its status."""
    build = client.post("/apps/myapp/builds", data={"external": "true"}).get_json()
    own, key = f"object://myapp/build/{build['id']}/logs", f"build/{build['id']}/logs"
    log = b"Building: .\nERROR: the local engine failed\n"
    other = client.post("/apps/myapp/builds", data={"url": source}).get_json()
    assert client.post(f"/apps/myapp/objects/build/{other['id']}/logs", data=b"forged").status_code == 403
    stored = client.post(f"/apps/myapp/objects/{key}", data=log)
    assert (stored.status_code, stored.get_json()["Url"]) == (200, own)
    for forged in (f"object://myapp/build/{other['id']}/logs", source):
        refused = client.put(f"/apps/myapp/builds/{build['id']}", data={"logs": forged})
        assert refused.status_code == 403, forged
    ended = client.put(
        f"/apps/myapp/builds/{build['id']}",
        data={"ended": "20261201.120000.000000000", "logs": own, "status": "failed"},
    )
    assert (ended.status_code, ended.get_json()["logs"], ended.get_json()["status"]) == (200, own, "failed")
    assert client.get(f"/apps/myapp/builds/{build['id']}/logs").data == log
    late = client.post(f"/apps/myapp/objects/{key}", data=b"rewritten after the end")
    assert late.status_code == 403  # the build has ended: its log is the rack's now
    assert client.put(f"/apps/myapp/builds/{build['id']}", data={"logs": own}).status_code == 403
    assert client.get(f"/apps/myapp/objects/{key}").data == log


@pytest.mark.parametrize("key", ["build/BFORGEDXXXX/logs", "build//BFORGEDXXXX/logs", "build", "./build/x"])
def test_keys_under_build_are_not_writable_through_the_objects_api(client, source, key):
    resp = client.post(f"/apps/myapp/objects/{key}", data=b"forged log")
    assert resp.status_code == 403, resp.data
    assert "only the rack writes" in resp.get_json()["error"]
    assert client.delete(f"/apps/myapp/objects/{key}").status_code == 403
    assert client.head("/apps/myapp/objects/build/BFORGEDXXXX/logs").status_code == 404
    assert client.post("/apps/myapp/objects/builds/mine.txt", data=b"fine").status_code == 200

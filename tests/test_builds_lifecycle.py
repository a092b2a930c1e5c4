"""Cancel and the reaper, on the real Postgres, Redis and object store (no Docker needed)."""

from __future__ import annotations

import pytest

from rack.builds import lifecycle
from rack.db import execute
from rack.logs.stream import BuildLog
from rack.sql import builds as sql


@pytest.fixture
def build(client, rack):
    client.post("/apps", data={"name": "myapp"})
    url = client.post("/apps/myapp/objects/tmp/src.tgz", data=b"x").get_json()["Url"]
    return client.post("/apps/myapp/builds", data={"url": url}).get_json()


def stored_log(client, build_id) -> bytes:
    row = client.get(f"/apps/myapp/builds/{build_id}").get_json()
    key = row["logs"].split("/", 3)[3]
    return client.get(f"/apps/myapp/objects/{key}").data


def test_cancel_a_queued_build(client, rack, build):
    resp = client.post(f"/apps/myapp/builds/{build['id']}/cancel")
    assert resp.status_code == 200
    body = resp.get_json()
    assert body["status"] == "failed"
    assert body["reason"].startswith("cancelled")
    # A worker picking the task up later does not run it.
    with rack.db.transaction() as conn:
        assert sql.mark_running(conn, id=build["id"], process="late-worker") is None
    log = BuildLog(rack.redis, build["id"])
    assert log.last_entry().end_status == "failed"
    assert b"ERROR: cancelled" in stored_log(client, build["id"])


def test_cancel_a_running_build_and_again(client, rack, build):
    with rack.db.transaction() as conn:
        sql.mark_running(conn, id=build["id"], process="w1")
    BuildLog(rack.redis, build["id"]).append("Building: web\n")
    first = client.post(f"/apps/myapp/builds/{build['id']}/cancel").get_json()
    assert first["status"] == "failed"
    # The worker's heartbeat now finds its build gone from `running`: that is its signal to stop.
    with rack.db.transaction() as conn:
        assert sql.heartbeat(conn, id=build["id"], process="w1") is None
    second = client.post(f"/apps/myapp/builds/{build['id']}/cancel")
    assert second.status_code == 200
    assert second.get_json() == first
    assert stored_log(client, build["id"]).startswith(b"Building: web\nERROR: cancelled")


def test_cancel_a_finished_build_changes_nothing(client, rack, build):
    with rack.db.transaction() as conn:
        sql.finish(conn, id=build["id"], status="complete")
    body = client.post(f"/apps/myapp/builds/{build['id']}/cancel").get_json()
    assert body["status"] == "complete"
    assert body["reason"] == ""


def test_cancel_unknown_build_is_404(client, build):
    assert client.post("/apps/myapp/builds/BNOSUCHBLDX/cancel").status_code == 404


def _stale(rack, build_id: str) -> None:
    with rack.db.transaction() as conn:
        execute(
            conn, "UPDATE builds SET heartbeat = now() - interval '10 minutes' WHERE id = %s", (build_id,)
        )


def test_reaper_retries_then_fails_a_build_whose_worker_stopped(client, rack, build, enqueued):
    with rack.db.transaction() as conn:
        sql.mark_running(conn, id=build["id"], process="dead-worker")
    BuildLog(rack.redis, build["id"]).append("Step 1/2 : FROM busybox\n")
    assert lifecycle.reap(rack) == []  # heartbeat is fresh
    _stale(rack, build["id"])
    # The first loss: back in the queue for another worker, one attempt further, marked in the log.
    [(build_id, outcome)] = lifecycle.reap(rack)
    assert (build_id, outcome) == (build["id"], "retried: attempt 2 of 2")
    body = client.get(f"/apps/myapp/builds/{build['id']}").get_json()
    assert (body["status"], body["attempt"], body["process"], body["position"]) == ("created", 2, "", 1)
    assert enqueued[-1] == build["id"]
    assert (
        BuildLog(rack.redis, build["id"])
        .text()
        .startswith(
            b"Step 1/2 : FROM busybox\n--- attempt 2 of 2 starts here: the worker running this build"
            b" (dead-worker)"
        )
    )
    # The second loss, with no attempt left: failed worker-lost, the log of both attempts kept.
    with rack.db.transaction() as conn:
        sql.mark_running(conn, id=build["id"], process="another-dead-worker")
    _stale(rack, build["id"])
    [(build_id, reason)] = lifecycle.reap(rack)
    assert build_id == build["id"]
    body = client.get(f"/apps/myapp/builds/{build['id']}").get_json()
    assert (body["status"], body["attempt"]) == ("failed", 2)
    assert body["reason"].startswith("worker-lost")
    stored = stored_log(client, build["id"])
    assert stored.startswith(b"Step 1/2 : FROM busybox\n--- attempt 2 of 2")
    assert stored.endswith(f"ERROR: {body['reason']}\n".encode())
    assert lifecycle.reap(rack) == []


def test_reaper_expires_builds_no_worker_took(client, rack, build):
    with rack.db.transaction() as conn:
        execute(conn, "UPDATE builds SET started = now() - interval '2 days' WHERE id = %s", (build["id"],))
    [(build_id, reason)] = lifecycle.reap(rack)
    assert reason.startswith("expired")
    assert client.get(f"/apps/myapp/builds/{build_id}").get_json()["status"] == "failed"


def test_reaper_times_out_builds_past_the_app_limit(client, rack, build):
    with rack.db.transaction() as conn:
        sql.mark_running(conn, id=build["id"], process="slow-worker")
        execute(conn, "UPDATE apps SET build_timeout = 5 WHERE name = 'myapp'")
        execute(
            conn, "UPDATE builds SET running_at = now() - interval '2 minutes' WHERE id = %s", (build["id"],)
        )
    [(_, reason)] = lifecycle.reap(rack)
    assert reason == "timeout: the build ran longer than its limit of 5s"


def test_cancel_through_another_app_changes_nothing(client, rack, build):
    client.post("/apps", data={"name": "other"})
    resp = client.post(f"/apps/other/builds/{build['id']}/cancel")
    assert resp.status_code == 404
    with rack.db.transaction() as conn:
        row = sql.get(conn, app="myapp", id=build["id"])
        assert row["cancel_requested"] is False
        assert sql.mark_running(conn, id=build["id"], process="w1") is not None


def test_lines_a_worker_writes_after_a_cancel_are_in_neither_the_stream_nor_the_store(client, rack, build):
    with rack.db.transaction() as conn:
        sql.mark_running(conn, id=build["id"], process="w1")
    log = BuildLog(rack.redis, build["id"])
    log.append("before\n")
    client.post(f"/apps/myapp/builds/{build['id']}/cancel")
    log.append("after the cancel\n")  # the worker has not noticed yet
    assert log.text() == stored_log(client, build["id"])
    assert b"after the cancel" not in log.text()


@pytest.mark.parametrize("reported", ["nothing", "running"])
def test_reaper_fails_an_outside_build_whose_builder_never_reports_its_end(client, rack, reported):
    client.post("/apps", data={"name": "myapp"})
    made = client.post("/apps/myapp/builds", data={"external": "true"}).get_json()
    if reported == "running":  # a builder that says it started, then goes quiet while it builds
        assert client.put(f"/apps/myapp/builds/{made['id']}", data={"status": "running"}).status_code == 200
    with rack.db.transaction() as conn:
        quiet = "UPDATE builds SET heartbeat = now() - interval '10 minutes' WHERE id = %s"
        execute(conn, quiet, (made["id"],))
    assert lifecycle.reap(rack) == []  # ten quiet minutes are within the limit: it reports at the end
    with rack.db.transaction() as conn:
        execute(conn, "UPDATE apps SET build_timeout = 60 WHERE name = 'myapp'")
        execute(conn, "UPDATE builds SET started = now() - interval '1 day' WHERE id = %s", (made["id"],))
    [(build_id, reason)] = lifecycle.reap(rack)
    assert (build_id, reason) == (
        made["id"],
        "timeout: the outside builder did not report this build complete or failed within its limit of 60s",
    )
    body = client.get(f"/apps/myapp/builds/{build_id}").get_json()
    assert (body["status"], body["reason"]) == ("failed", reason)
    assert stored_log(client, build_id).endswith(f"ERROR: {reason}\n".encode())
    assert lifecycle.reap(rack) == []

"""Redis or Postgres stopped and restarted while a real worker runs a build.

The build must end (`complete`, or `failed` with a reason), never stay `running`; the API answers 503 while
the service is down and 200 again once it is back, with nothing half-written.
"""

from __future__ import annotations

import secrets
import time

import pytest

from rack import objects
from rack.builds import record as builds
from rack.logs.stream import BuildLog
from tests.helpers import Workers, tarball, wait_for, workers_enqueue

pytestmark = pytest.mark.docker

# The heartbeat stops while Postgres is down: the timeout must outlast the outage, or the worker's own
# reaper would (rightly) call the build lost as soon as Postgres is back.
SETTINGS = {"heartbeat_interval": 1, "heartbeat_timeout": 15}
OUTAGE_S = 3


@pytest.fixture
def worker_env(docker_stack, settings, rack, monkeypatch):
    return workers_enqueue(rack, monkeypatch, docker_stack.env, storage=settings.storage, **SETTINGS)


@pytest.fixture
def worker(worker_env, tmp_path):
    with Workers(worker_env, tmp_path) as workers:
        yield workers.start("wo")[0]


def upload(client, app: str) -> tuple[str, str]:
    """Upload a build that prints, sleeps through the outage, then prints again; return its url and token."""
    token = secrets.token_hex(4)
    step = f"echo before {token} && sleep {OUTAGE_S + 4} && echo after {token}"
    files = {"convox.yml": "services:\n  web:\n    build: .\n", "Dockerfile": f"FROM busybox\nRUN {step}\n"}
    return client.post(f"/apps/{app}/objects/tmp/src.tgz", data=tarball(files)).get_json()["Url"], token


def run_through_outage(stack, rack, client, service: str, while_down) -> dict:
    """Start a build, stop `service` once its RUN step printed, call `while_down`, restart; return the row."""
    assert client.post("/apps", data={"name": "out"}).status_code == 200
    url, token = upload(client, "out")
    build_id = client.post("/apps/out/builds", data={"url": url}).get_json()["id"]
    stream = BuildLog(rack.redis, build_id)
    wait_for(lambda: f"before {token}\n".encode() in stream.text(), timeout=30, what="the RUN step")
    stack.stop([service])
    down = time.monotonic()
    try:
        while_down(build_id)
        time.sleep(max(0.0, OUTAGE_S - (time.monotonic() - down)))
    finally:
        stack.start([service])
    print(f"{service} down for {time.monotonic() - down:.1f}s", end="; ")
    done = wait_for(
        lambda: (row := builds.get(rack, "out", build_id))["status"] in builds.FINAL and row,
        timeout=60,
        what="the build to end",
    )
    assert done["status"] == "complete" or done["reason"], done
    took = (done["ended"] - done["started"]).total_seconds()
    print(f"build {done['status']} {done['reason']!r} in {took:.1f}s")
    _, key = objects.parse_url(done["logs"])
    with objects.open_object(rack, "out", key) as fh:
        stored = fh.read()
    assert f"before {token}\n".encode() in stored
    if done["status"] == "complete":
        assert f"after {token}\n".encode() in stored
        assert stream.text() == stored  # the live stream holds the same log: nothing lost in the outage
    return done


def test_redis_restarted_mid_build(docker_stack, rack, client, worker):
    refused = []

    def while_down(build_id: str) -> None:
        # Creating a build needs the queue: 503, and the row it wrote is failed rather than left queued.
        resp = client.post("/apps/out/builds", data={"url": "object://out/tmp/src.tgz"})
        assert resp.status_code == 503, resp.data
        assert "Redis" in resp.get_json()["error"]
        refused.append(client.get("/apps/out/builds?limit=1").get_json()[0])
        resp = client.get(f"/apps/out/builds/{build_id}/logs", query_string={"follow": "false"})
        assert resp.status_code == 503, resp.data
        assert client.get("/apps/out").status_code == 200  # what needs only Postgres still works

    done = run_through_outage(docker_stack, rack, client, "redis", while_down)
    assert done["status"] == "complete", done["reason"]
    assert refused[0]["status"] == "failed"
    assert refused[0]["reason"].startswith("platform:queue: ")
    resp = client.get(f"/apps/out/builds/{done['id']}/logs", query_string={"follow": "false"})
    assert resp.status_code == 200
    # Once Redis is back, builds queue again (the first build's upload went when it ended: upload anew).
    assert client.post("/apps/out/objects/tmp/src.tgz", data=b"any source").status_code == 200
    resp = client.post("/apps/out/builds", data={"url": "object://out/tmp/src.tgz"})
    assert resp.status_code == 200, resp.data
    assert client.post(f"/apps/out/builds/{resp.get_json()['id']}/cancel").get_json()["status"] == "failed"


def test_postgres_restarted_mid_build(docker_stack, rack, client, worker):
    def while_down(build_id: str) -> None:
        resp = client.get("/apps/out")
        assert resp.status_code == 503, resp.data
        assert "database is unreachable" in resp.get_json()["error"]
        assert client.get(f"/apps/out/builds/{build_id}").status_code == 503
        assert client.post("/apps", data={"name": "half"}).status_code == 503

    done = run_through_outage(docker_stack, rack, client, "postgres", while_down)
    assert done["status"] == "complete", done["reason"]
    assert client.get("/apps/out").status_code == 200
    assert client.get("/apps/half").status_code == 404  # nothing half-written while it was down
    assert client.get(f"/apps/out/builds/{done['id']}").get_json()["release"] == done["release"] != ""

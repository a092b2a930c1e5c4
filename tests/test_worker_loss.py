"""A worker SIGKILLed mid-build, on real Celery workers: the build fails `worker-lost`, its log is kept whole.

Two workers share the queue; the one running the build is killed with every process of its group (the
Celery main process and its pool child), the other one's reaper thread notices the stale heartbeat.
"""

from __future__ import annotations

import secrets
import threading
import time

import pytest
import requests

from rack import objects
from rack.builds import record as builds
from rack.config import load_settings
from rack.context import Rack
from rack.logs import reader as buildlogs
from rack.logs.stream import BuildLog
from rack.pipeline import run as pipeline
from tests.helpers import FAST_HEARTBEAT, Workers, basic, tarball, wait_for, workers_enqueue

pytestmark = pytest.mark.docker

HEARTBEAT_TIMEOUT = FAST_HEARTBEAT["heartbeat_timeout"]


@pytest.fixture
def worker_env(docker_stack, settings, rack, monkeypatch):
    """Workers on the test's object store with a fast heartbeat; the API enqueues on their broker."""
    # One attempt: a lost worker's build fails (tests/test_build_retry.py has it run again).
    return workers_enqueue(
        rack, monkeypatch, docker_stack.env, storage=settings.storage, build_attempts=1, **FAST_HEARTBEAT
    )


@pytest.fixture
def workers(worker_env, tmp_path):
    with Workers(worker_env, tmp_path) as started:
        yield started


def submit(client, app: str, files: dict[str, str]) -> str:
    """Upload a folder's tarball and create a build of it through the API; return the build id."""
    assert client.post("/apps", data={"name": app}).status_code == 200
    url = client.post(f"/apps/{app}/objects/tmp/src.tgz", data=tarball(files)).get_json()["Url"]
    resp = client.post(f"/apps/{app}/builds", data={"url": url})
    assert resp.status_code == 200, resp.data
    return resp.get_json()["id"]


class HttpFollower(threading.Thread):
    """Follow a build's log over the chunked HTTP route, as curl would."""

    def __init__(self, server, app: str, build_id: str) -> None:
        super().__init__(daemon=True)
        self.url = f"{server.url}/apps/{app}/builds/{build_id}/logs"
        self.headers = basic(server.password)
        self.data = bytearray()
        self.ended_at: float | None = None
        self.start()

    def run(self) -> None:
        with requests.get(self.url, params={"offset": 0}, headers=self.headers, stream=True, timeout=60) as r:
            for chunk in r.iter_content(chunk_size=None):
                self.data += chunk
        self.ended_at = time.monotonic()


class DomainFollower(threading.Thread):
    """Follow a build's log through `rack.buildlogs.read_log`, as the API does."""

    def __init__(self, rack: Rack, app: str, build_id: str) -> None:
        super().__init__(daemon=True)
        self.stream = buildlogs.read_log(rack, app, build_id, offset=0, poll_ms=500)
        self.data = bytearray()
        self.ended_at: float | None = None
        self.start()

    def run(self) -> None:
        for chunk in self.stream:
            if not isinstance(chunk, buildlogs.Notice):
                self.data += chunk
        self.ended_at = time.monotonic()


def test_sigkill_mid_build_fails_worker_lost_with_the_log_kept(
    rack, client, live_server, workers, worker_env, docker_stack
):
    token = secrets.token_hex(4)
    build_id = submit(
        client,
        "lost",
        {
            "convox.yml": "services:\n  web:\n    build: .\n",
            "Dockerfile": f"FROM busybox\nRUN echo before {token} && sleep 30\n",
        },
    )
    followers = [HttpFollower(live_server, "lost", build_id), DomainFollower(rack, "lost", build_id)]
    pair = workers.start("wa", "wb")  # after the followers: they attach while the build waits
    stream = BuildLog(rack.redis, build_id)
    wait_for(lambda: f"before {token}\n".encode() in stream.text(), timeout=30, what="the RUN step's output")
    row = builds.get(rack, "lost", build_id)
    assert row["status"] == "running"
    [victim] = [w for w in pair if row["process"].startswith(f"{w.name}@")]
    [survivor] = [w for w in pair if w is not victim]
    assert len(victim.group()) >= 2  # the Celery main process and its pool child
    printed = stream.text()

    victim.kill()
    killed_at = time.monotonic()
    assert victim.group() == []

    # The survivor's reaper thread fails the build once its heartbeat is stale.
    done = wait_for(
        lambda: (r := builds.get(rack, "lost", build_id))["status"] != "running" and r,
        timeout=HEARTBEAT_TIMEOUT + 15,
        what="the build to be reaped",
    )
    reaped_after = time.monotonic() - killed_at
    assert reaped_after <= HEARTBEAT_TIMEOUT + 15
    assert done["status"] == "failed"
    assert done["reason"].startswith("worker-lost: "), done["reason"]
    assert done["process"] == row["process"]
    wait_for(lambda: f"reaped build {build_id}" in survivor.text(), timeout=5, what="the survivor's log")

    # Every line printed before the kill is in the stored log, followed by the reason.
    _, key = objects.parse_url(done["logs"])
    with objects.open_object(rack, "lost", key) as fh:
        stored = fh.read()
    assert stored.startswith(printed)
    assert b"Building: web\n" in stored
    assert f"before {token}\n".encode() in stored
    assert stored.endswith(f"ERROR: {done['reason']}\n".encode())
    assert stream.last_entry().end_status == "failed"

    # Followers attached before the build started end soon after it was reaped, with the whole log.
    for follower in followers:
        follower.join(10)
        assert not follower.is_alive(), f"{type(follower).__name__} did not end"
        assert bytes(follower.data) == stored
    ended_after = max(f.ended_at for f in followers) - killed_at

    # A redelivered task (here: run again, in this process and through the surviving worker) does nothing.
    fast = Rack(load_settings(worker_env))
    try:
        assert pipeline.run_build(fast, build_id, process="redelivered:1") is None
        survivor_log = survivor.log.stat().st_size
        rack.enqueue_build(build_id)
        survivor.wait_for_log("succeeded", start=survivor_log, timeout=15)
    finally:
        fast.close()
    again = builds.get(rack, "lost", build_id)
    assert {k: again[k] for k in ("status", "reason", "process", "ended", "logs", "release")} == {
        k: done[k] for k in ("status", "reason", "process", "ended", "logs", "release")
    }
    assert stream.text() == stored  # no line added, nothing built again
    print(f"kill -> worker-lost {reaped_after:.1f}s, -> followers ended {ended_after:.1f}s")

    # dockerd stops the orphaned RUN step once its client is gone; nothing keeps sleeping.
    engine = docker_stack.docker()
    try:
        wait_for(
            lambda: not [c for c in engine.containers.list() if token in " ".join(c.attrs["Config"]["Cmd"])],
            timeout=10,
            what="the orphaned build step to stop",
        )
    finally:
        engine.close()

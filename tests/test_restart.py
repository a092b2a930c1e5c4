"""Restarting the API and the worker loses nothing: apps, objects, releases, and builds still queued."""

from __future__ import annotations

import time

import pytest
import requests

from tests.helpers import start_api, start_worker, tarball, worker_env_for

SOURCE = {
    "convox.yml": "services:\n  web:\n    build: .\n",
    "Dockerfile": "FROM busybox\nRUN echo restart-test\nCMD echo hi\n",
}


def wait_final(session, url: str, timeout: float = 90) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        build = session.get(url).json()
        if build["status"] in ("complete", "failed"):
            return build
        time.sleep(0.3)
    raise AssertionError(f"build still {build['status']} after {timeout}s")


@pytest.mark.docker
def test_restarts_lose_nothing(docker_stack, settings, tmp_path):
    env = worker_env_for(docker_stack.env, storage=settings.storage)
    http = requests.Session()
    http.auth = ("convox", settings.password)

    api = start_api(env, log_dir=tmp_path)
    port = api.url.rsplit(":", 1)[1]
    try:
        assert http.post(f"{api.url}/apps", data={"name": "keep"}).status_code == 200
        url = http.post(f"{api.url}/apps/keep/objects/tmp/src.tgz", data=tarball(SOURCE)).json()["Url"]
        release = http.post(f"{api.url}/apps/keep/releases", data={"env": "A=1"}).json()
        # No worker runs yet: the build waits in the queue.
        queued = http.post(f"{api.url}/apps/keep/builds", data={"url": url}).json()
        assert queued["status"] == "created"
    finally:
        api.stop()

    api = start_api(env, log_dir=tmp_path, port=int(port))
    worker = None
    try:
        assert http.get(f"{api.url}/apps/keep").status_code == 200
        assert http.head(f"{api.url}/apps/keep/objects/tmp/src.tgz").status_code == 200
        assert [r["id"] for r in http.get(f"{api.url}/apps/keep/releases").json()] == [release["id"]]
        assert http.get(f"{api.url}/apps/keep/builds/{queued['id']}").json()["status"] == "created"

        worker = start_worker(env, name="w1", log_dir=tmp_path)
        first = wait_final(http, f"{api.url}/apps/keep/builds/{queued['id']}")
        assert first["status"] == "complete", first["reason"]

        worker.stop()  # a graceful restart of the worker between builds
        worker = start_worker(env, name="w1", log_dir=tmp_path)
        # The first build's upload went when it ended: upload the source again, as `convox build` does.
        assert http.post(f"{api.url}/apps/keep/objects/tmp/src.tgz", data=tarball(SOURCE)).status_code == 200
        second_id = http.post(f"{api.url}/apps/keep/builds", data={"url": url}).json()["id"]
        second = wait_final(http, f"{api.url}/apps/keep/builds/{second_id}")
        assert second["status"] == "complete", second["reason"]
        assert [b["id"] for b in http.get(f"{api.url}/apps/keep/builds").json()] == [second_id, queued["id"]]
        assert len(http.get(f"{api.url}/apps/keep/releases").json()) == 3
    finally:
        if worker:
            worker.stop()
        api.stop()

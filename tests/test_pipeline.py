"""The build pipeline end to end on the real stack: source, Docker build, registry, build row, release."""

from __future__ import annotations

import dataclasses
import io
import json
import os
import shutil
import socket
import tempfile
import threading
import time
from pathlib import Path

import pytest

from rack import apps, objects, releases
from rack.builds import record as builds
from rack.config import load_settings
from rack.context import Rack
from rack.db import execute, fetchone
from rack.logs.stream import BuildLog
from rack.pipeline import layers
from rack.pipeline import run as pipeline
from rack.sql import builds as builds_sql
from tests.helpers import (
    build,
    build_log,
    cached_steps,
    registry_open,
    request_cancel,
    run_image,
    upload,
    when_started,
    write_app,
)

pytestmark = pytest.mark.docker

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "myapp"
MANIFEST_V2 = "application/vnd.docker.distribution.manifest.v2+json"


@pytest.fixture(scope="module")
def prack(docker_stack):
    """A Rack on the Docker stack with a fast heartbeat, clean tables and its own object store."""
    home = Path(tempfile.mkdtemp(prefix="rack-pipeline-"))
    settings = load_settings(
        {**docker_stack.env, "RACK_STORAGE": f"file://{home}/objects", "RACK_HEARTBEAT_INTERVAL": "1"}
    )
    r = Rack(settings)
    r.enqueue_build = lambda build_id: None  # the tests run each build themselves
    with r.db.transaction() as conn:
        execute(conn, "TRUNCATE apps, builds, releases CASCADE")
    yield r
    r.close()
    shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(scope="module")
def docker_client(docker_stack):
    client = docker_stack.docker()
    yield client
    client.close()


def run(client, image: str, *command: str) -> str:
    """Run an image once with no network and return what it printed."""
    return run_image(client, image, *command)


def registry_get(rack: Rack, path: str, *, head: bool = False):
    accept = f"{MANIFEST_V2}, {layers.MANIFEST}"  # images the rack writes itself have OCI manifests
    with registry_open(rack.settings, path, method="HEAD" if head else "GET", accept=accept) as response:
        return response.headers if head else json.loads(response.read())


@pytest.fixture(scope="module")
def myapp(prack):
    """The example app with COLOR from `env set` and GREETING from build args, built once."""
    apps.create(prack, name="myapp")
    releases.set_env(prack, "myapp", set_vars={"COLOR": "blue"})
    return build(prack, "myapp", EXAMPLE, build_args=["GREETING=hi there"], description="first")


@pytest.fixture(scope="module")
def cached(prack, myapp):
    """A second plain build, uploaded without applying .dockerignore (the engine applies it)."""
    return build(prack, "myapp", EXAMPLE, dockerignore=False, build_args=["GREETING=hi there"])


@pytest.fixture(scope="module")
def uncached(prack, cached):
    return build(prack, "myapp", EXAMPLE, build_args=["GREETING=hi there"], no_cache=True)


def test_example_app_builds_and_makes_a_release(prack, myapp):
    assert myapp["status"] == "complete", myapp["reason"]
    assert myapp["reason"] == ""
    assert myapp["process"] == "tests:1"
    assert myapp["manifest"] == (EXAMPLE / "convox.yml").read_text()
    assert myapp["entrypoint"] == "/app/bin/web"
    release = releases.get(prack, "myapp", myapp["release"])
    assert release["build"] == myapp["id"]
    assert release["manifest"] == myapp["manifest"]
    assert "COLOR=blue" in release["env"]
    assert apps.get(prack, "myapp")["release"] != myapp["release"]  # created, not promoted


def test_each_phase_is_timed_on_the_build_and_in_its_json(prack, myapp):
    phases = builds.phases(myapp)
    assert list(phases) == ["fetch", "extract", "build", "push", "release"]
    assert all(isinstance(v, float) and v >= 0 for v in phases.values()), phases
    assert phases["build"] > 0 and phases["push"] > 0 and phases["extract"] > 0
    # the phases happen one after another inside the time the build ran
    assert sum(phases.values()) <= (myapp["ended"] - myapp["running_at"]).total_seconds() + 0.01
    assert builds.serialize(builds.get(prack, "myapp", myapp["id"]))["phases"] == phases


def test_images_are_in_the_registry_with_the_recorded_digests(prack, myapp):
    registry = prack.settings.registry
    assert set(myapp["images"]) == {"web", "worker", "tools"}
    tags = set(registry_get(prack, "myapp/tags/list")["tags"])
    for service, image in myapp["images"].items():
        tag = f"{service}.{myapp['id']}"
        assert image["image"] == f"{registry}/myapp:{tag}"
        assert tag in tags
        headers = registry_get(prack, f"myapp/manifests/{tag}", head=True)
        assert headers["Docker-Content-Digest"] == image["digest"]


def test_the_log_tells_each_step_and_is_stored_whole(prack, myapp):
    text = build_log(prack, myapp)
    for line in ["Building: web", "Building: worker", "Running: docker tag busybox "]:
        assert line in text
    for service in ("web", "tools"):
        assert f"Running: docker push {myapp['images'][service]['image']}\n" in text
    # Dockerfile.worker only copies a file: the rack writes that image itself (pipeline/direct)
    assert "Building with the engine" not in text and text.count("Wrote the image from its files") == 1
    assert "baked: greeting=hi there color=blue\n" in text
    stream = BuildLog(prack.redis, myapp["id"])
    assert stream.text().decode() == text
    assert stream.last_entry().end_status == "complete"


def test_each_image_prints_what_it_should(myapp, docker_client):
    images = {name: image["image"] for name, image in myapp["images"].items()}
    assert run(docker_client, images["web"]) == "web: greeting=hi there color=blue\n"
    assert run(docker_client, images["worker"]) == "worker: ready\n"
    assert run(docker_client, images["tools"], "echo", "tools ok") == "tools ok\n"


def test_dockerignore_keeps_files_out_but_the_exception_in(myapp, cached, docker_client):
    for row in (myapp, cached):
        listing = run(docker_client, row["images"]["web"]["image"], "ls", "-a", "/app").split()
        assert "keep.log" in listing
        assert "debug.log" not in listing
        assert "secrets" not in listing
        assert "bin" in listing


def test_second_build_uses_the_cache_and_no_cache_reruns_the_step(
    prack, myapp, cached, uncached, docker_client
):
    assert cached["status"] == "complete", cached["reason"]
    assert uncached["status"] == "complete", uncached["reason"]
    cached_log, uncached_log = build_log(prack, cached), build_log(prack, uncached)
    assert any("RUN mkdir -p /app" in step for step in cached_steps(cached_log))
    assert "baked: greeting=" not in cached_log  # the RUN step did not run again
    assert not any("RUN" in step for step in cached_steps(uncached_log))
    assert "baked: greeting=hi there color=blue\n" in uncached_log

    def stamp(row: dict) -> str:
        return run(docker_client, row["images"]["web"]["image"], "cat", "/app/build-stamp.txt")

    assert stamp(cached) == stamp(myapp)
    assert stamp(uncached) != stamp(myapp)


def test_a_second_run_of_the_same_build_does_nothing(prack, myapp, uncached):
    assert pipeline.run_build(prack, myapp["id"], process="tests:2") is None
    again = builds.get(prack, "myapp", myapp["id"])
    assert again["process"] == "tests:1"
    assert again["release"] == myapp["release"]
    assert len(releases.list_for_app(prack, "myapp", limit=100)) == 4  # env set + three builds


@pytest.fixture(scope="module")
def broken(prack):
    apps.create(prack, name="broken")
    return prack


def test_a_failing_step_fails_the_build_naming_the_step(broken, tmp_path):
    folder = write_app(
        tmp_path,
        {
            "convox.yml": "services:\n  web:\n    build: .\n",
            "Dockerfile": "FROM busybox\nARG API_TOKEN\nARG BUILD_ID\n"
            'RUN echo "token=$API_TOKEN id=$BUILD_ID"\nRUN exit 3\n',
        },
    )
    row = build(broken, "broken", folder, build_args=["API_TOKEN=tok-secret-123", "BUILD_ID"])
    assert row["status"] == "failed"
    assert row["reason"] == (
        "user:step: Step 5/5 : RUN exit 3: The command '/bin/sh -c exit 3' returned a non-zero code: 3"
    )
    assert row["release"] == ""
    text = build_log(broken, row)
    assert f"token= id={row['id']}\n" in text  # a secret-named arg is withheld (tests/test_build_secrets.py)
    assert "Not passing build arg API_TOKEN" in text
    assert "tok-secret-123" not in text
    assert text.endswith(f"ERROR: {row['reason'].removeprefix('user:step: ')}\n")
    assert BuildLog(broken.redis, row["id"]).last_entry().end_status == "failed"
    assert list(builds.phases(row)) == ["fetch", "extract", "build"]  # the failed phase is timed too
    assert row["phases"]["build"] > 0


@pytest.mark.parametrize(
    ("files", "reason"),
    [
        (
            {"convox.yml": "services:\n  web:\n    build: [1, 2\n"},
            "user:manifest: convox.yml is not valid YAML",
        ),
        ({"convox.yml": "services:\n  Web_1:\n    build: .\n"}, "user:manifest: convox.yml: service name"),
        ({"other.yml": "services: {}\n"}, "user:manifest: manifest not found: convox.yml"),
        (
            {"convox.yml": "services:\n  web:\n    build: web\n", "web/app.txt": "x"},
            "user:dockerfile: Dockerfile not found at web/Dockerfile",
        ),
    ],
)
def test_bad_sources_fail_with_clear_reasons(broken, tmp_path, files, reason):
    row = build(broken, "broken", write_app(tmp_path, files))
    assert row["status"] == "failed"
    assert row["reason"].startswith(reason), row["reason"]
    assert row["logs"]
    assert f"ERROR: {row['reason'].split(': ', 1)[1]}\n" in build_log(broken, row)
    if "convox.yml" in files:
        assert row["manifest"] == files["convox.yml"]


def test_development_builds_the_development_stage_and_a_shared_build_runs_once(
    broken, tmp_path, docker_client
):
    folder = write_app(
        tmp_path,
        {
            "convox.yml": "services:\n  web:\n    build: .\n  api:\n    build:\n      path: .\n",
            "Dockerfile": 'FROM busybox AS development\nRUN echo dev > /stage\nCMD ["cat", "/stage"]\n'
            'FROM busybox AS production\nRUN echo prod > /stage\nCMD ["cat", "/stage"]\n',
        },
    )
    dev = build(broken, "broken", folder, development=True)
    prod = build(broken, "broken", folder)
    assert run(docker_client, dev["images"]["web"]["image"]) == "dev\n"
    assert run(docker_client, prod["images"]["web"]["image"]) == "prod\n"
    assert prod["images"]["api"]["digest"] == prod["images"]["web"]["digest"]
    text = build_log(broken, prod)
    assert text.count("Building: ") == 1
    assert f"Running: docker tag {prod['images']['web']['image']} {prod['images']['api']['image']}\n" in text


SLOW = {
    "convox.yml": "services:\n  web:\n    build: .\n",
    "Dockerfile": "FROM busybox\nRUN echo started; sleep 60\n",
}


def test_a_cancel_request_stops_the_running_step(broken, tmp_path, docker_client):
    url = upload(broken, "broken", write_app(tmp_path, SLOW))
    row = builds.create(broken, "broken", url=url)

    seen: dict = {}

    def look_then_cancel() -> None:
        seen.update(builds.phases(builds.get(broken, "broken", row["id"])))
        request_cancel(broken, row)

    canceller = when_started(broken, row["id"], look_then_cancel)
    began = time.monotonic()
    result = pipeline.run_build(broken, row["id"], process="tests:1")
    canceller.join(5)
    assert result["status"] == "failed"
    assert result["reason"] == "cancelled: the build was cancelled"
    assert time.monotonic() - began < 20
    assert list(seen) == ["fetch", "extract"]  # saved as each phase ended, while the build ran
    assert list(builds.phases(result)) == ["fetch", "extract", "build"]
    assert docker_client.containers.list(filters={"ancestor": "busybox"}) == []


def test_a_cancel_is_seen_between_heartbeats(broken, tmp_path, docker_client):
    """With heartbeats 60 s apart, a cancel still stops the running step within a few seconds."""
    slow_beats = Rack(dataclasses.replace(broken.settings, heartbeat_interval=60))
    slow_beats.enqueue_build = lambda build_id: None
    url = upload(slow_beats, "broken", write_app(tmp_path, SLOW))
    row = builds.create(slow_beats, "broken", url=url)

    canceller = when_started(slow_beats, row["id"], lambda: request_cancel(slow_beats, row))
    began = time.monotonic()
    try:
        result = pipeline.run_build(slow_beats, row["id"], process="tests:1")
    finally:
        slow_beats.close()
    canceller.join(5)
    assert result["reason"] == "cancelled: the build was cancelled"
    assert time.monotonic() - began < 20  # far below the 60 s heartbeat interval
    assert docker_client.containers.list(filters={"ancestor": "busybox"}) == []


def test_a_build_ended_elsewhere_stops_and_leaves_the_outcome_alone(broken, tmp_path, docker_client):
    from rack.builds import lifecycle

    url = upload(broken, "broken", write_app(tmp_path, SLOW))
    row = builds.create(broken, "broken", url=url)

    # lifecycle.cancel fails the build and ends its log itself
    canceller = when_started(broken, row["id"], lambda: lifecycle.cancel(broken, "broken", row["id"]))
    began = time.monotonic()
    assert pipeline.run_build(broken, row["id"], process="tests:1") is None
    canceller.join(5)
    assert time.monotonic() - began < 20
    done = builds.get(broken, "broken", row["id"])
    assert (done["status"], done["reason"]) == ("failed", "cancelled: the build was cancelled")
    text = build_log(broken, done)
    assert text.endswith("ERROR: cancelled: the build was cancelled\n")
    assert "platform:lost" not in text and "someone else" not in text
    assert docker_client.containers.list(filters={"ancestor": "busybox"}) == []


def test_a_build_past_its_timeout_fails_with_timeout(broken, tmp_path):
    with broken.db.transaction() as conn:
        execute(conn, "UPDATE apps SET build_timeout = 3 WHERE name = 'broken'")
    try:
        row = build(broken, "broken", write_app(tmp_path, SLOW))
    finally:
        with broken.db.transaction() as conn:
            execute(conn, "UPDATE apps SET build_timeout = NULL WHERE name = 'broken'")
    assert row["status"] == "failed"
    assert row["reason"] == "timeout: the build ran longer than its limit of 3s"
    assert "started\n" in build_log(broken, row)


def test_a_cancel_stops_a_git_clone_that_hangs(broken, monkeypatch):
    """A cancel stops a clone from a server that never answers, long before the build's timeout."""
    monkeypatch.setattr(broken, "settings", dataclasses.replace(broken.settings, git_allow_private=True))
    with broken.db.transaction() as conn:
        execute(conn, "UPDATE apps SET build_timeout = 60 WHERE name = 'broken'")
    with socket.socket() as sock:  # accepts connections (kernel backlog) and never answers
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        row = builds.create(broken, "broken", url=f"http://127.0.0.1:{sock.getsockname()[1]}/r.git")

        def cancel_when_cloning() -> None:
            for entry in BuildLog(broken.redis, row["id"]).follow(block_ms=200):
                if b"Cloning: " in entry.data:
                    time.sleep(1)
                    with broken.db.transaction() as conn:
                        builds_sql.request_cancel(conn, app="broken", id=row["id"])
                    return

        canceller = threading.Thread(target=cancel_when_cloning, daemon=True)
        canceller.start()
        began = time.monotonic()
        try:
            result = pipeline.run_build(broken, row["id"], process="tests:1")
        finally:
            with broken.db.transaction() as conn:
                execute(conn, "UPDATE apps SET build_timeout = NULL WHERE name = 'broken'")
        canceller.join(5)
    assert result["reason"] == "cancelled: the build was cancelled"
    assert time.monotonic() - began < 15  # the worker is free again, not busy until the 60 s timeout


def heartbeat(rack: Rack, build_id: str):
    with rack.db.transaction() as conn:
        return fetchone(conn, "SELECT heartbeat FROM builds WHERE id = %s", (build_id,))["heartbeat"]


@pytest.mark.parametrize("outcome", ["complete", "failed"])
def test_the_heartbeat_goes_on_while_the_outcome_is_recorded(broken, tmp_path, monkeypatch, outcome):
    """A slow store of the log must not let the reaper take the build for one whose worker was lost."""
    folder = write_app(tmp_path, {"convox.yml": "services:\n  tools:\n    image: busybox\n"})
    if outcome == "failed":
        (folder / "convox.yml").write_text("services: [not, a, map]\n")
    row = builds.create(broken, "broken", url=upload(broken, "broken", folder))
    put_stream = broken.store.put_stream
    beats = []

    def slow_put_stream(key, *args, **kwargs):
        if key.endswith(f"build/{row['id']}/logs"):
            beats.append(heartbeat(broken, row["id"]))
            time.sleep(2.5)  # the heartbeat interval here is 1 s
            beats.append(heartbeat(broken, row["id"]))
        return put_stream(key, *args, **kwargs)

    monkeypatch.setattr(broken.store, "put_stream", slow_put_stream)
    done = pipeline.run_build(broken, row["id"], process="tests:1")
    assert done["status"] == outcome, done["reason"]
    assert len(beats) == 2 and beats[1] > beats[0]


def test_a_missing_source_object_is_a_user_error(broken):
    url = objects.put(broken, "broken", "tmp/gone.tgz", io.BytesIO(b"x"))
    row = builds.create(broken, "broken", url=url)
    objects.delete(broken, "broken", "tmp/gone.tgz")
    result = pipeline.run_build(broken, row["id"], process="tests:1")
    assert result["status"] == "failed"
    assert result["reason"] == f"user:source: the source object is gone: {url}"


def test_the_worker_task_runs_the_build_as_this_worker(broken, tmp_path, monkeypatch):
    from rack_worker import tasks

    monkeypatch.setattr(tasks, "_rack", broken)
    monkeypatch.setattr(tasks, "_pid", os.getpid())
    folder = write_app(tmp_path, {"convox.yml": "services:\n  tools:\n    image: busybox\n"})
    url = upload(broken, "broken", folder)
    row = builds.create(broken, "broken", url=url)
    tasks.run_build.apply(args=[row["id"]], task_id="task-1")
    done = builds.get(broken, "broken", row["id"])
    assert done["status"] == "complete", done["reason"]
    assert done["process"].endswith(":task-1")
    assert done["entrypoint"] == ""  # no built service


@pytest.mark.parametrize(
    ("setting", "reason"),
    [
        ({"docker_host": "unix:///nonexistent/docker.sock"}, "platform:engine: "),
        ({"registry": "127.0.0.1:9"}, "platform:registry: pushing 127.0.0.1:9/broken:tools."),
    ],
)
def test_engine_or_registry_down_is_a_platform_error(broken, tmp_path, setting, reason):
    other = Rack(dataclasses.replace(broken.settings, **setting), enqueue_build=lambda build_id: None)
    try:
        folder = write_app(tmp_path, {"convox.yml": "services:\n  tools:\n    image: busybox\n"})
        row = builds.create(other, "broken", url=upload(other, "broken", folder))
        done = pipeline.run_build(other, row["id"], process="tests:1")
    finally:
        other.close()
    assert done["status"] == "failed"
    assert done["reason"].startswith(reason), done["reason"]

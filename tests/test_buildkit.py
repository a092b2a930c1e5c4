"""BuildKit builds on the real stack: the same reasons as the classic builder, secret and cache mounts,
services side by side; and the builder a rack uses, shown to clients."""

from __future__ import annotations

import random
import shutil
import tempfile
import time
from pathlib import Path

import pytest

from rack import apps
from rack.builds import record as builds
from rack.config import BUILDERS, ConfigError, load_settings
from rack.context import Rack
from rack.db import execute
from rack.pipeline import run as pipeline
from tests.helpers import build, build_log, request_cancel, upload, when_started, write_app

pytestmark = pytest.mark.docker


@pytest.fixture(scope="module", params=BUILDERS)
def brack(request, docker_stack):
    """A Rack building with each builder, with a fast heartbeat, its own object store and a fresh app."""
    home = Path(tempfile.mkdtemp(prefix="rack-buildkit-"))
    settings = load_settings(
        {
            **docker_stack.env,
            "RACK_STORAGE": f"file://{home}/objects",
            "RACK_HEARTBEAT_INTERVAL": "1",
            "RACK_BUILDER": request.param,
        }
    )
    r = Rack(settings, enqueue_build=lambda build_id: None)
    with r.db.transaction() as conn:
        execute(conn, "DELETE FROM apps WHERE name = %s", (f"bk-{request.param}",))
    apps.create(r, name=f"bk-{request.param}")
    yield r
    r.close()
    shutil.rmtree(home, ignore_errors=True)


def app_of(rack: Rack) -> str:
    return f"bk-{rack.settings.builder}"


def running(marker: str) -> list[int]:
    """Return the pids of processes whose command line holds `marker`."""
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if marker.replace(" ", "\0").encode() in (proc / "cmdline").read_bytes():
                    pids.append(int(proc.name))
            except OSError:
                continue
    return pids


def test_a_failing_step_in_a_later_stage_is_named_as_the_classic_builder_names_it(brack, tmp_path):
    folder = write_app(
        tmp_path,
        {
            "convox.yml": "services:\n  web:\n    build: .\n",
            "Dockerfile": "FROM busybox AS base\nARG X\nRUN true\n"
            "FROM base\nENV A=1\nWORKDIR /app\nRUN echo about to fail; exit 4\n",
        },
    )
    row = build(brack, app_of(brack), folder)
    assert row["status"] == "failed"
    assert row["reason"] == (
        "user:step: Step 7/7 : RUN echo about to fail; exit 4: "
        "The command '/bin/sh -c echo about to fail; exit 4' returned a non-zero code: 4"
    )
    text = build_log(brack, row)
    assert "about to fail\n" in text
    assert text.endswith(f"ERROR: {row['reason'].removeprefix('user:step: ')}\n")


def test_a_timeout_stops_the_step_with_the_same_reason(brack, tmp_path):
    marker = f"sleep 6{random.randrange(10**6)}"
    files = {
        "convox.yml": "services:\n  web:\n    build: .\n",
        "Dockerfile": f"FROM busybox\nRUN echo started; {marker}\n",
    }
    with brack.db.transaction() as conn:
        execute(conn, "UPDATE apps SET build_timeout = 3 WHERE name = %s", (app_of(brack),))
    try:
        row = build(brack, app_of(brack), write_app(tmp_path, files), no_cache=True)
    finally:
        with brack.db.transaction() as conn:
            execute(conn, "UPDATE apps SET build_timeout = NULL WHERE name = %s", (app_of(brack),))
    assert (row["status"], row["reason"]) == ("failed", "timeout: the build ran longer than its limit of 3s")
    assert "started\n" in build_log(brack, row)
    deadline = time.monotonic() + 10
    while running(marker) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert running(marker) == []  # the engine stopped the step, not only the rack its client


def test_a_cancel_stops_the_step_in_the_engine(brack, tmp_path):
    marker = f"sleep 6{random.randrange(10**6)}"
    files = {
        "convox.yml": "services:\n  web:\n    build: .\n",
        "Dockerfile": f"FROM busybox\nRUN echo started; {marker}\n",
    }
    row = builds.create(brack, app_of(brack), url=upload(brack, app_of(brack), write_app(tmp_path, files)))
    seen: list[list[int]] = []

    def cancel() -> None:
        deadline = time.monotonic() + 5  # "started" is printed just before the shell runs the sleep
        while not running(marker) and time.monotonic() < deadline:
            time.sleep(0.05)
        seen.append(running(marker))
        request_cancel(brack, row)

    canceller = when_started(brack, row["id"], cancel)
    result = pipeline.run_build(brack, row["id"], process="tests:1")
    canceller.join(5)
    assert (result["status"], result["reason"]) == ("failed", "cancelled: the build was cancelled")
    assert seen and seen[0], "the step was running when the cancel came"
    deadline = time.monotonic() + 10
    while running(marker) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert running(marker) == []


@pytest.mark.parametrize(
    ("env", "words"),
    [
        ({"RACK_BUILDER": "kaniko"}, "RACK_BUILDER must be one of buildkit, classic"),
        ({"RACK_BUILD_PARALLEL": "0"}, "RACK_BUILD_PARALLEL must be from 1 to 16"),
    ],
)
def test_a_bad_builder_setting_is_refused(env, words):
    with pytest.raises(ConfigError, match=words):
        load_settings({"RACK_PASSWORD": "x", **env})

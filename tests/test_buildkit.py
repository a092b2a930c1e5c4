"""BuildKit builds on the real stack: the same reasons as the classic builder, secret and cache mounts,
services side by side; and the builder a rack uses, shown to clients."""

from __future__ import annotations

import gzip
import hashlib
import json
import random
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from rack import apps
from rack.builds import record as builds
from rack.config import BUILDERS, ConfigError, load_settings
from rack.context import Rack
from rack.db import execute
from rack.pipeline import folders
from rack.pipeline import run as pipeline
from tests.helpers import (
    build,
    build_log,
    cached_steps,
    request_cancel,
    run_image,
    upload,
    when_started,
    write_app,
)

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


def test_a_second_build_takes_every_stages_steps_from_the_engines_cache(brack, tmp_path):
    # ROUND, declared last, changes the build's inputs but none of its steps: the second build is real.
    base = f"RUN echo base {random.random()} > /base"
    dockerfile = f"FROM busybox AS base\n{base}\nFROM busybox\nCOPY --from=base /base /base\nARG ROUND\n"
    folder = write_app(
        tmp_path, {"convox.yml": "services:\n  web:\n    build: .\n", "Dockerfile": dockerfile}
    )
    first = build(brack, app_of(brack), folder, build_args=["ROUND=1"])
    assert first["status"] == "complete", first["reason"]
    second = build(brack, app_of(brack), folder, build_args=["ROUND=2"])
    assert second["status"] == "complete", second["reason"]
    # The app's last image is the second build's cache source, yet the stage it does not hold is cached too.
    assert any(base in step for step in cached_steps(build_log(brack, second))), build_log(brack, second)


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


@pytest.fixture(scope="module")
def bk(docker_stack):
    """A Rack building with BuildKit (the default), its own object store and app, and a docker client."""
    home = Path(tempfile.mkdtemp(prefix="rack-buildkit-"))
    env = {**docker_stack.env, "RACK_STORAGE": f"file://{home}/objects", "RACK_HEARTBEAT_INTERVAL": "1"}
    r = Rack(load_settings(env), enqueue_build=lambda build_id: None)
    with r.db.transaction() as conn:
        execute(conn, "DELETE FROM apps WHERE name IN ('bk-secrets', 'bk-cache', 'bk-other', 'bk-sides')")
    for name in ("bk-secrets", "bk-cache", "bk-other", "bk-sides"):
        apps.create(r, name=name)
    r.docker = docker_stack.docker()  # type: ignore[attr-defined]
    yield r
    r.docker.close()  # type: ignore[attr-defined]
    r.close()
    shutil.rmtree(home, ignore_errors=True)


SECRETS = {
    "convox.yml": "services:\n  web:\n    build: .\n",
    "Dockerfile": "FROM busybox\n"
    "RUN --mount=type=secret,id=NPM_TOKEN --mount=type=secret,id=DB_PASSWORD \\\n"
    "    --mount=type=secret,id=COLOR \\\n"
    '    echo "read $(cat /run/secrets/NPM_TOKEN | wc -c) bytes, color $(cat /run/secrets/COLOR)" \\\n'
    "    && cat /run/secrets/NPM_TOKEN /run/secrets/DB_PASSWORD && echo \\\n"
    "    && sha256sum /run/secrets/NPM_TOKEN | cut -d' ' -f1 > /token.sha256\n"
    'CMD ["cat", "/token.sha256"]\n',
}


def test_secrets_reach_run_steps_as_mounts_and_nowhere_else(bk, tmp_path, monkeypatch):
    from rack import exports, releases
    from rack.pipeline.engine import buildkit

    token, password = f"npm-{random.randrange(10**12)}", f"pw-{random.randrange(10**12)}"
    releases.set_env(bk, "bk-secrets", set_vars={"NPM_TOKEN": token, "COLOR": "teal"})
    files: list[tuple[Path, int]] = []
    write_secret = buildkit._secret_file

    def spied(folder: Path, name: str, value: str) -> Path:
        path = write_secret(folder, name, value)
        files.append((path, path.stat().st_mode & 0o777))
        return path

    monkeypatch.setattr(buildkit, "_secret_file", spied)
    row = build(bk, "bk-secrets", write_app(tmp_path, SECRETS), build_args=[f"DB_PASSWORD={password}"])
    assert row["status"] == "complete", row["reason"]

    text = build_log(bk, row)
    assert f"read {len(token)} bytes, color teal" in text
    assert "***" in text  # the step printed both values: masked
    image = row["images"]["web"]["image"]
    assert run_image(bk.docker, image) == hashlib.sha256(token.encode()).hexdigest() + "\n"
    # The files lived only for the build, readable by the worker alone; the values are nowhere after it.
    assert sorted(p.name for p, _ in files) == ["secret-COLOR", "secret-DB_PASSWORD", "secret-NPM_TOKEN"]
    assert {mode for _, mode in files} == {0o600}
    # in the build's own folder, which a worker sweeps at start-up should it have been killed mid-build
    assert all(
        p.is_relative_to(folders.root(bk)) and p.parent.parent.name.startswith(row["id"]) for p, _ in files
    )
    assert not any(p.exists() or p.parent.exists() for p, _ in files)
    inspected = json.dumps(bk.docker.api.inspect_image(image))
    history = json.dumps(bk.docker.api.history(image))
    archive = gzip.decompress(b"".join(exports.export(bk, "bk-secrets", row["id"])))
    for value in (token, password):
        assert value not in text
        assert value not in inspected
        assert value not in history
        assert value.encode() not in archive
    assert len(archive) > 100_000  # the image's layers are in it: the search looked at them


CACHED = {
    "convox.yml": "services:\n  web:\n    build: .\n",
    "Dockerfile": "FROM busybox\nCOPY stamp /stamp\n"
    "RUN --mount=type=cache,target=/root/.cache \\\n"
    '    echo "the cache held $(ls /root/.cache | wc -l) runs" && cp /stamp "/root/.cache/$(cat /stamp)"\n',
}


def test_cache_mounts_persist_per_app_and_no_cache_empties_them(bk, tmp_path):
    def held(app: str, n: int, **options) -> str:
        folder = write_app(tmp_path / f"{app}-{n}", {**CACHED, "stamp": f"{app}-{n}-{random.random()}"})
        row = build(bk, app, folder, **options)
        assert row["status"] == "complete", row["reason"]
        found = re.findall(r"the cache held (\d+) runs", build_log(bk, row))
        assert len(found) == 1
        return found[0]

    first = held("bk-cache", 1)
    assert held("bk-cache", 2) == str(int(first) + 1)  # the second build found the first one's file
    assert held("bk-other", 1) == "0"  # another app never sees this app's cache
    assert held("bk-cache", 3, no_cache=True) == "0"
    assert held("bk-cache", 4) == "1"  # the cache --no-cache started is the one kept


def test_a_cold_engine_reuses_the_layers_of_the_apps_previous_images(bk, tmp_path):
    folder = write_app(
        tmp_path,
        {
            "convox.yml": "services:\n  web:\n    build: .\n",
            # ROUND, declared after the step, changes the inputs but not the step's cache: each build is real
            "Dockerfile": f"FROM busybox\nRUN echo baking {random.random()} && sleep 1 > /baked\nARG ROUND\n",
        },
    )
    first = build(bk, "bk-other", folder, build_args=["ROUND=1"])
    assert first["status"] == "complete", first["reason"]
    assert "baking" in build_log(bk, first).split("Running: docker push")[0]
    # Forget everything this engine knows of the build: its image and BuildKit's cache.
    bk.docker.images.remove(first["images"]["web"]["image"], force=True)
    subprocess.run(
        ["/usr/bin/docker", "-H", bk.settings.docker_host, "builder", "prune", "--all", "--force"],
        check=True,
        capture_output=True,
        env={"DOCKER_CONFIG": str(tmp_path / "docker-config"), "PATH": "/usr/bin:/bin"},
    )
    second = build(bk, "bk-other", folder, build_args=["ROUND=2"])
    assert second["status"] == "complete", second["reason"]
    text = build_log(bk, second)
    assert "importing cache manifest from " in text
    assert any("RUN echo baking" in step for step in cached_steps(text))
    assert "0.0 baking" not in text and not re.search(r"^#\d+ [\d.]+ baking", text, re.M)


def sides(stamp: str, first: str, second: str) -> dict[str, str]:
    return {
        "convox.yml": "services:\n  web:\n    build: web\n  api:\n    build: api\n  admin:\n    build: web\n",
        "web/Dockerfile": f"FROM busybox\nRUN echo web {stamp} && {first}\n",
        "api/Dockerfile": f"FROM busybox\nRUN echo api {stamp} && {second}\n",
    }


def test_independent_services_build_side_by_side_and_a_shared_one_once(bk, tmp_path):
    row = build(bk, "bk-sides", write_app(tmp_path, sides(str(random.random()), "sleep 4", "sleep 4")))
    assert row["status"] == "complete", row["reason"]
    text = build_log(bk, row)
    steps = [float(s) for s in re.findall(r"^\[(?:web|api)\] #\d+ DONE (\d+\.\d+)s$", text, re.M)]
    sleeps = sum(s for s in steps if s >= 3.5)
    ratio = row["phases"]["build"] / sleeps
    took = row["phases"]["build"]
    print(f"\nside by side: the build phase took {took:.1f}s for {sleeps:.1f}s of steps: ratio {ratio:.2f}")
    assert len([s for s in steps if s >= 3.5]) == 2
    assert ratio < 0.8
    assert re.search(r"^\[web\] #\d+ [\d.]+ web ", text, re.M) and re.search(
        r"^\[api\] #\d+ [\d.]+ api ", text, re.M
    )
    assert text.count("Building: ") == 2
    web, admin = row["images"]["web"], row["images"]["admin"]
    assert f"Running: docker tag {web['image']} {admin['image']}\n" in text
    assert web["digest"] == admin["digest"]


def test_a_failing_service_stops_the_one_beside_it(bk, tmp_path):
    marker = f"sleep 6{random.randrange(10**6)}"
    files = sides(str(random.random()), "exit 5", f"echo started; {marker}")
    row = builds.create(bk, "bk-sides", url=upload(bk, "bk-sides", write_app(tmp_path, files)))
    seen: list[list[int]] = []
    watcher = when_started(bk, row["id"], lambda: seen.append(running(marker)))
    done = pipeline.run_build(bk, row["id"], process="tests:1")
    watcher.join(5)
    assert done["status"] == "failed"
    assert done["reason"].startswith("user:step: Step 2/2 : RUN echo web "), done["reason"]
    assert done["reason"].endswith("returned a non-zero code: 5")
    deadline = time.monotonic() + 10
    while running(marker) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert running(marker) == []


def test_a_syntax_line_naming_a_frontend_the_rack_cannot_pull_says_what_to_do(bk, tmp_path):
    frontend = f"{bk.settings.registry}/nosuch/dockerfile:1"
    files = {
        "convox.yml": "services:\n  web:\n    build: .\n",
        "Dockerfile": f"# syntax={frontend}\nFROM busybox\nRUN true\n",
    }
    row = build(bk, "bk-other", write_app(tmp_path, files))
    assert row["status"] == "failed"
    assert row["reason"].startswith(
        f"user:dockerfile: the Dockerfile's `# syntax=` line names the frontend {frontend}, which this rack "
        "cannot pull: drop the line (the built-in frontend supports RUN --mount for cache and secrets), or "
        "push the frontend image into the rack's registry"
    ), row["reason"]


def test_steps_are_named_as_the_classic_builder_numbers_them():
    from rack.pipeline.engine.buildkit import StepNames, normalize_image

    names = StepNames(
        "ARG BASE=busybox\nFROM ${BASE} AS base\nWORKDIR /app\nENV A=1\nCOPY . .\n"
        "FROM base\nRUN make \\\n  all\nFROM busybox\nCOPY --from=base /app /app\n"
    )
    assert names.label("[base 2/3] WORKDIR /app") == "Step 3/9 : WORKDIR /app"
    assert names.label("[stage-1 1/1] RUN make   all") == "Step 7/9 : RUN make   all"
    assert names.label("[stage-2 2/2] COPY --from=base /app /app") == "Step 9/9 : COPY --from=base /app /app"
    assert names.label("[other 1/1] RUN x") == "Step [other 1/1] RUN x"  # unknown: BuildKit's own name
    assert StepNames("FROM busybox\nRUN true\n").from_label("docker.io/library/busybox:latest") == (
        "Step 1/2 : FROM busybox"
    )
    assert normalize_image("127.0.0.1:5000/app:web.B1") == "127.0.0.1:5000/app:web.B1"
    assert normalize_image("me/tool") == "docker.io/me/tool:latest"


def test_cache_mounts_get_an_id_under_the_apps_scope():
    from rack.pipeline.engine.buildkit import scope_cache_mounts

    text = (
        "RUN --mount=type=cache,target=/root/.cache pip install .\n"
        "RUN --mount=type=cache,id=npm,target=/n --mount=type=secret,id=T npm ci\n"
    )
    assert scope_cache_mounts(text, "rack/app/1") == (
        "RUN --mount=type=cache,target=/root/.cache,id=rack/app/1/root/.cache pip install .\n"
        "RUN --mount=type=cache,target=/n,id=rack/app/1/npm --mount=type=secret,id=T npm ci\n"
    )

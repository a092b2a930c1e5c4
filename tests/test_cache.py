"""The cache follows the app, not the worker: a cold engine reuses the layers of the app's last build."""

from __future__ import annotations

import dataclasses
import io
import secrets
import shutil
import tempfile
from pathlib import Path

import pytest

from rack import apps, objects
from rack.builds import record
from rack.context import Rack
from rack.pipeline import run as pipeline
from rack_stack import Stack
from tests.helpers import printed, tarball

pytestmark = pytest.mark.docker
SOURCES: dict[str, bytes] = {}  # each app's source tarball, uploaded anew for each of its builds


@pytest.fixture
def cold_engine(docker_stack):
    """A second Docker engine that has never built anything and has no image at all."""
    home = Path(tempfile.mkdtemp(prefix="rack-cold-", dir="/tmp"))
    home.chmod(0o755)
    stack = Stack(home, fast=True)
    stack.start(["dockerd"])
    stack.services["dockerd"].forward(docker_stack.ports["registry"])  # the shared registry
    yield stack
    stack.stop()
    shutil.rmtree(home, ignore_errors=True)


def build_on(rack: Rack, app: str, *, worker: Rack | None = None, no_cache: bool = False) -> dict:
    """Queue a build of the app's source through `rack` and run it on `worker` (a Rack on another engine)."""
    # Each build gets its own upload, as from the CLI: a build's uploaded source is removed when it ends.
    key = f"tmp/src-{secrets.token_hex(4)}.tgz"
    objects.put_bytes_stream(rack, app, key, io.BytesIO(SOURCES[app]))
    row = record.create(rack, app, url=f"object://{app}/{key}", no_cache=no_cache)
    worker = worker or rack
    done = pipeline.run_build(worker, row["id"], process=f"test:{worker.settings.docker_host}")
    assert done is not None and done["status"] == "complete", done and done["reason"]
    return done


def log_of(rack: Rack, row: dict) -> str:
    _, key = objects.parse_url(row["logs"])
    with objects.open_object(rack, row["app"], key) as fh:
        return fh.read().decode()


@pytest.mark.parametrize("builder", ["classic", "buildkit"])
def test_a_cold_worker_reuses_every_layer_of_the_apps_last_build(
    docker_stack, rack, settings, cold_engine, builder, monkeypatch
):
    registry = settings.registry
    monkeypatch.setattr(rack, "settings", dataclasses.replace(settings, builder=builder))
    source = {
        "convox.yml": "services:\n  web:\n    build: .\n",
        # The base comes from the rack's registry (a cold engine has none); the step stamps each real run.
        "Dockerfile": f"FROM {registry}/busybox:latest\n"
        "RUN cat /proc/sys/kernel/random/uuid > /stamp\n"
        'CMD ["cat", "/stamp"]\n',
    }
    apps.create(rack, name="cached")
    SOURCES["cached"] = tarball(source)
    first = build_on(rack, "cached")  # on the test stack's engine
    stamp = printed(docker_stack, first["images"]["web"]["image"])

    cold = Rack(dataclasses.replace(rack.settings, docker_host=cold_engine.env["RACK_DOCKER_HOST"]))
    try:
        second = build_on(rack, "cached", worker=cold)
        log = log_of(cold, second)
        if builder == "classic":  # the classic builder pulls the app's last image, then matches its layers
            assert f"Cache: pulled {first['images']['web']['image']}\n" in log
            run_step = log[log.index("Step 2/3 : RUN") :]
            assert run_step.splitlines()[1].strip() == "---> Using cache", log
        else:  # BuildKit reads the inline cache of the app's last image from the registry
            assert "CACHED" in log, log
        # The step did not run again: the cold engine's image holds the first build's stamp.
        assert printed(cold_engine, second["images"]["web"]["image"]) == stamp

        # --no-cache builds from scratch, even where the layers are now at hand.
        third = build_on(rack, "cached", worker=cold, no_cache=True)
        assert "Cache: pulled" not in log_of(cold, third)
        assert printed(cold_engine, third["images"]["web"]["image"]) != stamp
    finally:
        cold.close()


def test_a_cache_image_gone_from_the_registry_is_skipped(
    docker_stack, rack, settings, cold_engine, monkeypatch
):
    """The app's last image was deleted from the registry: the build goes on without a cache."""
    registry = settings.registry
    monkeypatch.setattr(rack, "settings", dataclasses.replace(settings, builder="classic"))
    source = {
        "convox.yml": "services:\n  web:\n    build: .\n",
        "Dockerfile": f"FROM {registry}/busybox:latest\nRUN echo fresh > /fresh\n",
    }
    apps.create(rack, name="gone")
    SOURCES["gone"] = tarball(source)
    first = build_on(rack, "gone")
    # Point the last build's image at a tag the registry never had.
    from rack.db import execute

    with rack.db.transaction() as conn:
        execute(
            conn,
            "UPDATE builds SET images = jsonb_set(images, '{web,image}', %s) WHERE id = %s",
            (f'"{registry}/gone:web.BMISSINGTAG"', first["id"]),
        )
    cold = Rack(dataclasses.replace(rack.settings, docker_host=cold_engine.env["RACK_DOCKER_HOST"]))
    try:
        second = build_on(rack, "gone", worker=cold)
    finally:
        cold.close()
    assert f"Cache: {registry}/gone:web.BMISSINGTAG is not available" in log_of(rack, second)

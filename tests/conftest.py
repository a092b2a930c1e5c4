"""Test harness: a real Postgres, Redis (and, for pipeline tests, dockerd and a registry) per session."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest
import redis as redis_lib

from rack.config import load_settings
from rack.context import Rack
from rack.db import Database, execute
from rack.migrate import migrate
from rack_stack import Stack
from tests.helpers import LiveServer, SimBuild, basic


def _stack_home(name: str) -> Path:
    # Short paths under /tmp: unix sockets have a 108-byte limit and postgres must traverse them.
    path = Path(tempfile.mkdtemp(prefix=f"rack-{name}-", dir="/tmp"))
    path.chmod(0o755)
    return path


@pytest.fixture(scope="session")
def stack():
    """Postgres and Redis on free loopback ports, migrated once."""
    s = Stack(_stack_home("test"), fast=True)
    s.start(services=("postgres", "redis"))
    db = Database(s.env["RACK_DATABASE_URL"])
    migrate(db)
    db.close()
    yield s
    s.stop()
    shutil.rmtree(s.home, ignore_errors=True)  # everything in it was the session's


@pytest.fixture(scope="session")
def docker_stack(stack):
    """Add the Docker engine and the registry, with the base image seeded."""
    stack.start(services=("postgres", "redis", "dockerd", "registry"))
    stack.seed_base_image()
    return stack


@pytest.fixture
def settings(stack, tmp_path):
    env = dict(stack.env)
    env["RACK_STORAGE"] = f"file://{tmp_path}/objects"
    # tests build one uploaded source more than once; tests/test_leftovers.py turns this off
    env["RACK_KEEP_SOURCES"] = "true"
    return load_settings(env)


@pytest.fixture
def enqueued() -> list[str]:
    """Builds handed to the queue, for tests that do not run a worker."""
    return []


@pytest.fixture
def rack(settings, enqueued):
    """A Rack on clean tables and an empty Redis."""
    r = Rack(settings, enqueue_build=enqueued.append)
    with r.db.transaction() as conn:
        execute(conn, "TRUNCATE apps, builds, releases, counters, workers CASCADE")
    r.redis.flushdb()
    yield r
    r.close()


@pytest.fixture
def app(rack):
    from rack_api import create_app

    flask_app = create_app(rack=rack)
    flask_app.config["TESTING"] = True
    return flask_app


@pytest.fixture
def client(app, settings):
    """A test client that sends the rack password on every request."""
    c = app.test_client()
    c.environ_base.update({"HTTP_AUTHORIZATION": basic(settings.password)["Authorization"]})
    return c


@pytest.fixture
def redis_client(stack):
    r = redis_lib.Redis.from_url(stack.env["RACK_REDIS_URL"])
    r.flushdb()
    yield r
    r.close()


@pytest.fixture
def live_server(app, settings):
    """The API over real HTTP; builds it enqueues land in the `enqueued` list."""
    server = LiveServer(app, settings.password)
    yield server
    server.stop()


@pytest.fixture
def cli_env(live_server, monkeypatch, tmp_path):
    """Point the `convox` CLI at the live server, with its own config folder."""
    monkeypatch.setenv("RACK_URL", live_server.rack_url)
    monkeypatch.setenv("CONVOX_CONFIG", str(tmp_path / "convox-config"))
    return {"RACK_URL": live_server.rack_url, "CONVOX_CONFIG": str(tmp_path / "convox-config")}


@pytest.fixture
def sim(rack):
    """Make builds that the test drives as a worker would (app `logs`): see tests.helpers.SimBuild."""
    from rack import apps

    apps.create(rack, name="logs")
    return lambda: SimBuild(rack, "logs")


@pytest.fixture
def gunicorn_server(stack, settings, tmp_path):
    """The API under gunicorn, as production runs it, on the test stack; `.password`, `.url`, `.pid`."""
    from tests.helpers import rack_env, start_api

    api = start_api(rack_env(stack.env, storage=settings.storage), log_dir=tmp_path)
    api.password = settings.password  # type: ignore[attr-defined]
    yield api
    api.stop()

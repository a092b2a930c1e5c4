"""A worker SIGKILLed mid-build: its build runs again on another worker, with the log of both attempts."""

from __future__ import annotations

import re
import secrets

import pytest
from click.testing import CliRunner

from cli.main import main
from rack import objects
from rack.builds import record as builds
from rack.logs.stream import BuildLog
from tests.helpers import FAST_HEARTBEAT, Workers, tarball, wait_for, workers_enqueue

pytestmark = pytest.mark.docker


def test_a_lost_workers_build_is_retried_once_on_another_worker(
    rack, client, docker_stack, settings, monkeypatch, tmp_path, cli_env
):
    env = workers_enqueue(rack, monkeypatch, docker_stack.env, storage=settings.storage, **FAST_HEARTBEAT)
    token = secrets.token_hex(4)
    source = {
        "convox.yml": "services:\n  web:\n    build: .\n",
        # Each attempt prints its own id, then waits long enough to be killed in the first one.
        "Dockerfile": f"FROM busybox\nRUN echo run-{token}-$(cat /proc/sys/kernel/random/uuid) && sleep 4\n",
    }
    assert client.post("/apps", data={"name": "retry"}).status_code == 200
    url = client.post("/apps/retry/objects/tmp/src.tgz", data=tarball(source)).get_json()["Url"]
    build_id = client.post("/apps/retry/builds", data={"url": url}).get_json()["id"]
    stream = BuildLog(rack.redis, build_id)
    with Workers(env, tmp_path) as workers:
        pair = workers.start("wa", "wb")
        ran = re.compile(rf"run-{token}-[0-9a-f]{{8}}-[0-9a-f-]+")  # the step's output, not its own line
        wait_for(
            lambda: ran.search(stream.text().decode()), timeout=30, what="the first attempt's step to print"
        )
        first = builds.get(rack, "retry", build_id)
        [victim] = [w for w in pair if first["process"].startswith(f"{w.name}@")]
        [survivor] = [w for w in pair if w is not victim]
        printed = stream.text()
        victim.kill()

        done = wait_for(
            lambda: (r := builds.get(rack, "retry", build_id))["status"] in ("complete", "failed") and r,
            timeout=60,
            what="the retried build to end",
        )
    assert done["status"] == "complete", done["reason"]
    assert done["attempt"] == 2
    assert done["process"].startswith(f"{survivor.name}@")
    assert done["release"]
    # The stored log: the first attempt's lines as they were, the mark of the retry, the second attempt.
    _, key = objects.parse_url(done["logs"])
    with objects.open_object(rack, "retry", key) as fh:
        stored = fh.read().decode()
    assert stored.startswith(printed.decode())
    before, mark, after = stored.partition("--- attempt 2 of 2 starts here: the worker running this build")
    assert mark, stored
    assert f"({first['process']}) stopped responding" in after.splitlines()[0]
    runs = ran.findall(stored)
    assert len(runs) == 2 and runs[0] != runs[1]  # each attempt ran the step once
    assert runs[0] in before and runs[1] in after
    assert "Building: web\n" in before and "Building: web\n" in after
    assert client.get(f"/apps/retry/builds/{build_id}").get_json()["attempt"] == 2
    info = CliRunner().invoke(main, ["builds", "info", build_id, "-a", "retry"], catch_exceptions=False)
    assert "Attempt      2" in info.output.splitlines(), info.output


def test_attempts_are_a_setting_of_at_least_one(stack):
    from rack.config import ConfigError, load_settings

    assert load_settings(dict(stack.env)).build_attempts == 2
    with pytest.raises(ConfigError, match="RACK_BUILD_ATTEMPTS must be at least 1"):
        load_settings({**stack.env, "RACK_BUILD_ATTEMPTS": "0"})

"""Three workers as three hosts on one machine: each one's engine in a network namespace of its own.

Postgres, Redis, the registry and the object store are shared. Twelve builds from two apps (ten, then
two) all complete on all three workers, the second app's builds do not wait behind the first app's burst,
and a worker SIGKILLed mid-build costs a retry on another worker, not the build.
"""

from __future__ import annotations

import contextlib
import io
import re
import secrets
import shutil
import tempfile
from pathlib import Path

import pytest

from rack import apps, objects
from rack.builds import record
from rack.errors import Conflict
from rack.logs.stream import BuildLog
from rack_stack.base_image import CHANGES, NAME, TAG, rootfs_tar
from rack_stack.hosts import Hosts
from tests.helpers import FAST_HEARTBEAT, Workers, tarball, wait_for, workers_enqueue

pytestmark = pytest.mark.docker


@pytest.fixture
def hosts(docker_stack):
    root = Path(tempfile.mkdtemp(prefix="rack-hosts-", dir="/tmp"))
    root.chmod(0o755)
    started = Hosts(root, count=3, registry_port=docker_stack.ports["registry"]).start()
    try:
        for engine in started.engines:
            client = engine.docker()
            try:
                client.api.import_image_from_data(rootfs_tar(), repository=NAME, tag=TAG, changes=CHANGES)
            finally:
                client.close()
        yield started
    finally:
        started.stop()
        shutil.rmtree(root, ignore_errors=True)


def queue(rack, app: str, count: int, source: dict) -> list[str]:
    try:
        apps.create(rack, name=app)
    except Conflict:  # made by an earlier call
        pass
    ids = []
    for _ in range(count):  # an upload per build, as from the CLI: a build's source goes when it ends
        key = f"tmp/src-{secrets.token_hex(4)}.tgz"
        objects.put_bytes_stream(rack, app, key, io.BytesIO(tarball(source)))
        # BUILD_ID as a build arg: every build's step differs, so none comes from an engine's cache.
        ids.append(record.create(rack, app, url=f"object://{app}/{key}", build_args=["BUILD_ID"])["id"])
    return ids


def source(step: str) -> dict:
    return {
        "convox.yml": "services:\n  web:\n    build: .\n",
        "Dockerfile": f"FROM busybox\nARG BUILD_ID\nRUN echo $BUILD_ID && {step}\n",
    }


def test_three_hosts_share_the_queue_fairly_and_survive_a_lost_worker(
    docker_stack, hosts, rack, settings, monkeypatch, tmp_path
):
    # A host's namespace sees none of the machine's loopback (Postgres there), only the registry through
    # the engine's forwarder on the namespace's own loopback.
    engine = hosts.engines[0].docker()
    try:
        probe = (
            f"nc -z -w 2 127.0.0.1 {docker_stack.ports['postgres']} && echo reached-postgres;"
            f" wget -S -O - http://{hosts.registry}/v2/ 2>&1 | grep -q ' 401 ' && echo reached-registry"
        )
        container = engine.containers.create("busybox", ["sh", "-c", probe], network_mode="host")
        container.start()
        container.wait(timeout=30)
        seen = container.logs().decode()
        container.remove(force=True)
    finally:
        engine.close()
    assert "reached-registry" in seen and "reached-postgres" not in seen, seen

    env = workers_enqueue(
        rack,
        monkeypatch,
        docker_stack.env,
        storage=settings.storage,
        registry=hosts.registry,
        **FAST_HEARTBEAT,
    )
    burst = queue(rack, "burst", 10, source("sleep 2"))
    other = queue(rack, "other", 2, source("sleep 2"))  # queued behind the whole burst
    names = [f"host{n}" for n in range(3)]
    with contextlib.ExitStack() as started:
        # One worker per host, each driving the engine in its host's namespace.
        groups = [
            started.enter_context(
                Workers(
                    {
                        **env,
                        "RACK_DOCKER_HOST": hosts.docker_host(n),
                        "RACK_BUILD_NETWORK": hosts.build_network,
                    },
                    tmp_path,
                )
            )
            for n in range(3)
        ]
        procs = [group.start(name)[0] for group, name in zip(groups, names, strict=True)]

        def ended(ids: list[str], app: str):
            rows = [record.get(rack, app, i) for i in ids]
            return rows if all(r["status"] in ("complete", "failed") for r in rows) else None

        rows = wait_for(
            lambda: (x := ended(burst, "burst")) and (y := ended(other, "other")) and x + y,
            timeout=240,
            what="the twelve builds to end",
        )
        assert [r["status"] for r in rows] == ["complete"] * 12, [r["reason"] for r in rows]
        used = {r["process"].split("@")[0] for r in rows}
        assert used == set(names)  # every worker built
        # Each build's image is in the shared registry, tagged for its app.
        assert all(r["images"]["web"]["image"].startswith(f"{hosts.registry}/{r['app']}:web.") for r in rows)
        # The second app did not wait behind the burst: both its builds started before the burst's third.
        burst_starts = sorted(r["running_at"] for r in rows if r["app"] == "burst")
        other_starts = [r["running_at"] for r in rows if r["app"] == "other"]
        assert max(other_starts) < burst_starts[2], (other_starts, burst_starts)

        # SIGKILL the worker running a build mid-step: another worker runs it again, to completion.
        token = secrets.token_hex(4)
        [lost] = queue(
            rack, "other", 1, source(f"echo step-{token}-$(cat /proc/sys/kernel/random/uuid) && sleep 6")
        )
        stream = BuildLog(rack.redis, lost)
        ran = re.compile(rf"step-{token}-[0-9a-f]{{8}}".encode())  # the step's output, not its command
        wait_for(lambda: ran.search(stream.text()), timeout=60, what="the step to print")
        first = record.get(rack, "other", lost)
        [victim] = [p for p in procs if first["process"].startswith(f"{p.name}@")]
        printed = stream.text()
        victim.kill()
        done = wait_for(
            lambda: (r := record.get(rack, "other", lost))["status"] in ("complete", "failed") and r,
            timeout=90,
            what="the retried build to end",
        )
    assert done["status"] == "complete", done["reason"]
    assert done["attempt"] == 2
    assert not done["process"].startswith(f"{victim.name}@")
    _, key = objects.parse_url(done["logs"])
    with objects.open_object(rack, "other", key) as fh:
        log = fh.read().decode()
    assert log.startswith(printed.decode())  # the first attempt's lines, whole
    first_part, mark, second_part = log.partition("--- attempt 2 of 2 starts here")
    assert mark and ran.search(first_part.encode()) and ran.search(second_part.encode())

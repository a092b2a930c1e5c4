"""The fair queue: apps are served in turn, each under its running limit; a waiting build knows its place."""

from __future__ import annotations

import io

import pytest

from rack import apps, objects
from rack.builds import queue, record
from rack.config import ConfigError, load_settings
from rack.sql import builds as sql
from tests.helpers import Workers, tarball, wait_for, workers_enqueue


def queue_builds(rack, app: str, count: int) -> list[str]:
    apps.create(rack, name=app)
    objects.put_bytes_stream(rack, app, "tmp/src.tgz", io.BytesIO(b"source"))
    return [record.create(rack, app, url=f"object://{app}/tmp/src.tgz")["id"] for _ in range(count)]


def claim(rack, worker: str, limit: int = 2) -> dict | None:
    with rack.db.transaction() as conn:
        return queue.claim_next(conn, process=worker, app_max_running=limit)


def finish(rack, build_id: str) -> None:
    with rack.db.transaction() as conn:
        assert sql.finish(conn, id=build_id, status="complete")


def running_per_app(conn) -> dict[str, int]:
    from rack.db import fetchall

    rows = fetchall(conn, "SELECT app, count(*) AS n FROM builds WHERE status = 'running' GROUP BY app")
    return {r["app"]: r["n"] for r in rows}


def test_a_burst_of_one_app_does_not_hold_back_another(rack):
    queue_builds(rack, "burst", 10)
    queue_builds(rack, "other", 2)  # queued after the whole burst
    # Five workers free at once: the apps alternate, and each stops at its limit of two.
    taken = [claim(rack, f"w{i}") for i in range(5)]
    assert [row and row["app"] for row in taken] == ["burst", "other", "burst", "other", None]
    with rack.db.transaction() as conn:
        assert running_per_app(conn) == {"burst": 2, "other": 2}
        assert queue.waiting(conn) == 8
    # A higher limit lets the burst use the free worker.
    assert claim(rack, "w5", limit=3)["app"] == "burst"


def test_apps_take_turns_and_never_pass_their_limit(rack):
    burst = queue_builds(rack, "burst", 10)
    other = queue_builds(rack, "other", 2)
    order, running = [], {}
    for worker in ("w1", "w2", "w3"):  # three workers take a build each
        row = claim(rack, worker)
        order.append(row["app"])
        running[worker] = row
    # Then each worker in turn finishes its build and takes the next, until the queue is empty.
    peak = 0
    while True:
        for worker in ("w1", "w2", "w3"):
            if running.get(worker):
                finish(rack, running.pop(worker)["id"])
            row = claim(rack, worker)
            if row is not None:
                order.append(row["app"])
                running[worker] = row
            with rack.db.transaction() as conn:
                counts = running_per_app(conn)
            peak = max([peak, *counts.values()])
        if not running:
            break
    assert sorted(order) == sorted(["burst"] * 10 + ["other"] * 2)
    assert peak <= 2  # RACK_APP_MAX_RUNNING
    # The other app's two builds ran among the first four, not after the burst.
    assert [i for i, app in enumerate(order) if app == "other"] == [1, 3]  # burst, other, burst, other
    with rack.db.transaction() as conn:
        assert queue.waiting(conn) == 0
    assert set(burst) | set(other) == {r["id"] for r in record.list_for_app(rack, "burst", limit=20)} | {
        r["id"] for r in record.list_for_app(rack, "other", limit=20)
    }


def test_a_waiting_build_shows_its_position_in_builds_info(rack, client):
    burst = queue_builds(rack, "burst", 3)
    [other] = queue_builds(rack, "other", 1)
    # The fair order: burst #1, other #1 (its app's first turn), burst #2, burst #3.
    positions = [client.get(f"/apps/burst/builds/{b}").get_json()["position"] for b in burst]
    assert positions == [1, 3, 4]
    assert client.get(f"/apps/other/builds/{other}").get_json()["position"] == 2
    claim(rack, "w1")  # burst #1 runs: it leaves the queue, the others move up
    body = client.get(f"/apps/burst/builds/{burst[0]}").get_json()
    assert (body["status"], body["position"]) == ("running", 0)
    assert client.get(f"/apps/other/builds/{other}").get_json()["position"] == 1


def test_builds_info_prints_the_position(rack, cli_env):
    from click.testing import CliRunner

    from cli.main import main

    burst = queue_builds(rack, "burst", 2)
    result = CliRunner().invoke(main, ["builds", "info", burst[1], "-a", "burst"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "Position     2 in the queue" in result.output.splitlines()


def test_the_limit_is_a_setting_of_at_least_one(stack):
    assert load_settings(dict(stack.env)).app_max_running == 2
    assert load_settings({**stack.env, "RACK_APP_MAX_RUNNING": "5"}).app_max_running == 5
    with pytest.raises(ConfigError, match="RACK_APP_MAX_RUNNING must be at least 1"):
        load_settings({**stack.env, "RACK_APP_MAX_RUNNING": "0"})


SLOW = {
    "convox.yml": "services:\n  web:\n    build: .\n",
    "Dockerfile": "FROM busybox\nRUN sleep 1 && echo built > /built\n",
}


@pytest.mark.docker
def test_a_real_worker_serves_the_other_app_next(docker_stack, rack, settings, monkeypatch, tmp_path):
    """Through Celery: one worker, three builds of one app queued before one of another app."""
    env = workers_enqueue(rack, monkeypatch, docker_stack.env, storage=settings.storage)
    ids = {}
    for app, count in (("burst", 3), ("other", 1)):
        apps.create(rack, name=app)
        ids[app] = []
        for n in range(count):  # an upload per build: a build's uploaded source goes when it ends
            objects.put_bytes_stream(rack, app, f"tmp/src{n}.tgz", io.BytesIO(tarball(SLOW)))
            ids[app].append(record.create(rack, app, url=f"object://{app}/tmp/src{n}.tgz")["id"])
    with Workers(env, tmp_path) as workers:
        workers.start("solo")

        def ended():
            rows = [record.get(rack, app, b) for app, bs in ids.items() for b in bs]
            return rows if all(r["status"] in ("complete", "failed") for r in rows) else None

        rows = wait_for(ended, timeout=120, what="the four builds to end")
    assert [r["status"] for r in rows] == ["complete"] * 4, [r["reason"] for r in rows]
    served = [r["app"] for r in sorted(rows, key=lambda r: r["ended"])]  # one worker: ended in the order run
    assert served == ["burst", "other", "burst", "burst"]

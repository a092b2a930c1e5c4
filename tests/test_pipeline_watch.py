"""The watch on a running build, on the real Postgres: heartbeats, cancel, timeout (no Docker needed)."""

from __future__ import annotations

import dataclasses
import io
import time

import pytest

from rack import apps, objects
from rack.builds import record as builds
from rack.db import fetchone
from rack.pipeline.watch import Watch
from rack.sql import builds as sql
from tests.helpers import wait_for


@pytest.fixture
def running(rack, monkeypatch) -> dict:
    """A build marked running by worker `w1`, on a rack that heartbeats every 0.1 s."""
    monkeypatch.setattr(rack, "settings", dataclasses.replace(rack.settings, heartbeat_interval=0.1))
    apps.create(rack, name="myapp")
    url = objects.put(rack, "myapp", "tmp/src.tgz", io.BytesIO(b"x"))
    build = builds.create(rack, "myapp", url=url)
    with rack.db.transaction() as conn:
        return sql.mark_running(conn, id=build["id"], process="w1")


def heartbeat(rack, build_id: str):
    with rack.db.transaction() as conn:
        return fetchone(conn, "SELECT heartbeat FROM builds WHERE id = %s", (build_id,))["heartbeat"]


def test_a_watch_past_its_deadline_keeps_the_heartbeat(rack, running):
    with Watch(rack, build_id=running["id"], process="w1", timeout=0.3) as watch:
        wait_for(lambda: watch.stopped is not None)
        assert watch.stopped.reason == "timeout: the build ran longer than its limit of 0.3s"
        first = heartbeat(rack, running["id"])
        wait_for(lambda: heartbeat(rack, running["id"]) > first)  # a step slow to die is not a lost worker
        with rack.db.transaction() as conn:
            sql.request_cancel(conn, app="myapp", id=running["id"])
        time.sleep(0.3)
        assert watch.stopped.code == "timeout"  # the first reason stays
    settled = heartbeat(rack, running["id"])
    time.sleep(0.3)
    assert heartbeat(rack, running["id"]) == settled  # closing the watch ends the heartbeat


def test_a_watch_stops_a_cancelled_build_and_interrupts_it(rack, running):
    interrupted = []
    with Watch(rack, build_id=running["id"], process="w1", timeout=60) as watch:
        watch.on_stop(lambda: interrupted.append(True))
        with rack.db.transaction() as conn:
            sql.request_cancel(conn, app="myapp", id=running["id"])
        wait_for(lambda: watch.stopped is not None)
    assert watch.stopped.reason == "cancelled: the build was cancelled" and interrupted

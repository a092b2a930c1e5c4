"""Metrics: /metrics on the API and on each worker, the same numbers from any process (Postgres, Redis)."""

from __future__ import annotations

import dataclasses
import io
import time

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from rack import apps, metrics, objects
from rack.builds import record
from rack.context import Rack
from rack.db import execute
from rack.logs import reader
from rack.logs.stream import BuildLog
from rack.sql import builds as sql
from rack_worker import metrics as worker_metrics
from tests.helpers import FAST_HEARTBEAT, Workers, free_port, wait_for, worker_env_for


def samples(text: str) -> dict[tuple, float]:
    """Return {(name, (label, value), ...): value} for every rack_* sample."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name.startswith("rack_"):
                out[(s.name, *sorted(s.labels.items()))] = s.value
    return out


def scrape(client, **headers) -> dict[tuple, float]:
    resp = client.get("/metrics", headers=headers)
    assert resp.status_code == 200, resp.data
    assert resp.content_type.startswith("text/plain; version=0.0.4")
    return samples(resp.get_data(as_text=True))


def make(rack, app: str, status: str, *, reason: str = "", phases: dict | None = None, **fields) -> dict:
    objects.put_bytes_stream(rack, app, "tmp/src.tgz", io.BytesIO(b"source"))
    row = record.create(rack, app, url=f"object://{app}/tmp/src.tgz")
    with rack.db.transaction() as conn:
        if status in ("running", "complete", "failed"):
            sql.mark_running(conn, id=row["id"], process="w1@host:task")
        if status in ("complete", "failed"):
            sql.finish(
                conn, id=row["id"], status=status, reason=reason, fields={"phases": phases or {}, **fields}
            )
    return row


def test_metrics_need_the_password_or_the_metrics_token(client, app, rack, monkeypatch):
    anonymous = app.test_client()
    assert anonymous.get("/metrics").status_code == 401
    assert scrape(client)[("rack_metrics_up",)] == 1
    # With a token set, Prometheus sends it as a Bearer token instead of the rack password.
    monkeypatch.setattr(rack, "settings", dataclasses.replace(rack.settings, metrics_token="t0k"))
    assert scrape(anonymous, Authorization="Bearer t0k")[("rack_metrics_up",)] == 1
    assert anonymous.get("/metrics", headers={"Authorization": "Bearer nope"}).status_code == 401
    assert anonymous.get("/apps", headers={"Authorization": "Bearer t0k"}).status_code == 401  # only /metrics


def test_builds_queue_phases_logs_uploads_followers_and_workers(client, rack):
    for name in ("alpha", "beta"):
        apps.create(rack, name=name)
    make(
        rack,
        "alpha",
        "complete",
        phases={"fetch": 0.2, "build": 3.0, "push": 0.7},
        log_lines=10,
        log_bytes=400,
    )
    make(rack, "alpha", "complete", phases={"fetch": 0.3, "build": 40.0}, log_lines=5, log_bytes=100)
    make(rack, "alpha", "failed", reason="user:step: Step 2/2 : RUN false", log_lines=2, log_bytes=50)
    make(rack, "beta", "failed", reason="worker-lost: the worker stopped responding")
    live = make(rack, "beta", "running")
    waiting = [make(rack, "alpha", "created") for _ in range(2)] + [make(rack, "beta", "created")]
    with rack.db.transaction() as conn:
        execute(
            conn,
            "UPDATE builds SET started = now() - interval '90 seconds' WHERE id = %s",
            (waiting[0]["id"],),
        )
    metrics.worker_heartbeat(rack, "w1@host")
    # An upload through the API counts its bytes; a follower of a live log counts while it reads.
    assert client.post("/apps/beta/objects/tmp/up.tgz", data=b"x" * 1234).status_code == 200
    BuildLog(rack.redis, live["id"]).append("Step 1/2 : FROM busybox\n")
    follower = reader.read_log(rack, "beta", live["id"], poll_ms=100, block_ms=50)
    assert next(iter(follower)) == b"Step 1/2 : FROM busybox\n"

    got = scrape(client)
    assert got[("rack_builds", ("reason", ""), ("status", "complete"))] == 2
    assert got[("rack_builds", ("reason", "user:step"), ("status", "failed"))] == 1
    assert got[("rack_builds", ("reason", "worker-lost"), ("status", "failed"))] == 1
    assert got[("rack_builds", ("reason", ""), ("status", "running"))] == 1
    assert got[("rack_builds", ("reason", ""), ("status", "created"))] == 3
    assert got[("rack_queue_depth", ("app", "alpha"))] == 2
    assert got[("rack_queue_depth", ("app", "beta"))] == 1
    assert 90 <= got[("rack_queue_oldest_seconds", ("app", "alpha"))] < 900
    assert got[("rack_queue_oldest_seconds", ("app", "beta"))] < 60
    assert got[("rack_builds_running", ("app", "beta"))] == 1
    assert got[("rack_build_phase_seconds_count", ("phase", "build"))] == 2
    assert got[("rack_build_phase_seconds_sum", ("phase", "build"))] == pytest.approx(43.0)
    assert got[("rack_build_phase_seconds_bucket", ("le", "5.0"), ("phase", "build"))] == 1
    assert got[("rack_build_phase_seconds_bucket", ("le", "60.0"), ("phase", "build"))] == 2
    assert got[("rack_build_phase_seconds_bucket", ("le", "0.1"), ("phase", "fetch"))] == 0
    assert got[("rack_build_phase_seconds_bucket", ("le", "+Inf"), ("phase", "push"))] == 1
    assert got[("rack_log_lines_total",)] == 17
    assert got[("rack_log_bytes_total",)] == 550
    assert got[("rack_upload_bytes_total",)] == 1234
    assert got[("rack_log_followers",)] == 1
    assert got[("rack_worker_heartbeat_timestamp_seconds", ("worker", "w1@host"))] == pytest.approx(
        time.time(), abs=60
    )
    assert got[("rack_workers_alive",)] == 1
    follower.close()
    assert scrape(client)[("rack_log_followers",)] == 0

    # Another process (a worker's metrics server, its own connections) answers the same numbers.
    other = Rack(rack.settings)
    try:
        body = b"".join(worker_metrics.wsgi_app(other)({"PATH_INFO": "/metrics"}, lambda *a: None))
    finally:
        other.close()
    theirs, ours = samples(body.decode()), scrape(client)
    ages = {k for k in ours if k[0] == "rack_queue_oldest_seconds"}  # they grow between the two scrapes
    assert {k: v for k, v in theirs.items() if k not in ages} == {
        k: v for k, v in ours.items() if k not in ages
    }
    assert all(theirs[k] == pytest.approx(ours[k], abs=5) for k in ages)


def test_a_worker_serves_its_metrics_and_heartbeats(stack, rack, tmp_path):
    port = free_port()
    env = worker_env_for(
        stack.env, storage=rack.settings.storage, metrics_port=port, metrics_token="w-t0k", **FAST_HEARTBEAT
    )
    url = f"http://127.0.0.1:{port}/metrics"
    with Workers(env, tmp_path) as workers:
        [worker] = workers.start("metered")
        wait_for(lambda: _answers(url), timeout=10, what="the worker's metrics server")
        assert requests.get(url, timeout=5).status_code == 401
        auth = {"Authorization": "Bearer w-t0k"}

        def beat():
            got = samples(requests.get(url, headers=auth, timeout=5).text)
            return [k for k in got if k[0] == "rack_worker_heartbeat_timestamp_seconds"]

        [key] = wait_for(beat, timeout=10, what="the worker's heartbeat in its metrics")
        assert dict(key[1:])["worker"].startswith("metered@")
        assert requests.get(url.replace("/metrics", "/other"), timeout=5).status_code == 404
        assert worker.alive()


def _answers(url: str) -> bool:
    try:
        requests.get(url, timeout=2)
        return True
    except requests.ConnectionError:
        return False

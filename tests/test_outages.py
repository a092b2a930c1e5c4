"""Postgres or Redis going away: the API answers 503 with a clear message and recovers by itself."""

from __future__ import annotations

import pytest


@pytest.fixture
def myapp(client):
    client.post("/apps", data={"name": "myapp"})
    return client


def test_postgres_down_is_503_then_recovers(stack, myapp):
    assert myapp.get("/apps/myapp").status_code == 200  # the pool holds a live connection now
    stack.stop(["postgres"])
    try:
        resp = myapp.get("/apps/myapp")
        assert resp.status_code == 503
        assert "database is unreachable" in resp.get_json()["error"]
        assert myapp.post("/apps", data={"name": "other"}).status_code == 503
    finally:
        stack.start(["postgres"])
    resp = myapp.get("/apps/myapp")
    assert resp.status_code == 200, resp.data
    assert myapp.get("/apps/other").status_code == 404  # nothing half-written while it was down


def test_redis_down_is_503_then_recovers(stack, myapp, rack):
    from rack.logs.stream import BuildLog

    url = myapp.post("/apps/myapp/objects/tmp/s.tgz", data=b"x").get_json()["Url"]
    build_id = myapp.post("/apps/myapp/builds", data={"url": url}).get_json()["id"]
    BuildLog(rack.redis, build_id).append("line one\n")
    stack.stop(["redis"])
    try:
        resp = myapp.get(f"/apps/myapp/builds/{build_id}/logs?follow=false&offset=0")
        assert resp.status_code == 503
        assert "Redis" in resp.get_json()["error"]
    finally:
        stack.start(["redis"])
    resp = myapp.get(f"/apps/myapp/builds/{build_id}/logs?follow=false&offset=0")
    assert resp.status_code == 200
    assert resp.data.startswith(b"line one\n")  # appendonly: the stream survived the restart

"""Outbound events: hooks added per rack or per app, deliveries signed as Convox signs them, queued on a real
Celery worker and retried when the receiver fails."""

from __future__ import annotations

import hashlib
import hmac
import io
import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from click.testing import CliRunner

from cli.main import main
from rack import apps, events, objects
from rack.config import load_settings
from rack.pipeline import run as pipeline
from rack_api.queue import send_event_for
from tests.helpers import start_worker, wait_for, worker_env_for


class Receiver:
    """An HTTP endpoint on loopback that records each POST and answers 500 to the first `fail` of them."""

    def __init__(self, fail: int = 0) -> None:
        self.fail, self.seen, self.paths = fail, [], []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                outer.seen.append((dict(self.headers), body.decode(), time.monotonic()))
                outer.paths.append(self.path)
                failing = len(outer.seen) <= outer.fail
                self.send_response(500 if failing else 200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def actions(self) -> list[str]:
        return [json.loads(body)["action"] for _, body, _ in self.seen]

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    r = Receiver(fail=1)
    yield r
    r.stop()


def verify(secret: str, headers: dict, body: str) -> int:
    """Check a delivery as a receiver would; return its signed time."""
    m = re.fullmatch(r"t=(\d+),v1=([0-9a-f]{64})", headers["Convox-Signature"])
    assert m, headers["Convox-Signature"]
    expected = hmac.new(secret.encode(), f"{m.group(1)}.{body}".encode(), hashlib.sha256).hexdigest()
    assert hmac.compare_digest(expected, m.group(2))
    return int(m.group(1))


def test_add_list_remove_per_rack_and_per_app(client):
    client.post("/apps", data={"name": "myapp"})
    everything = client.post("/events/webhooks", data={"url": "https://example.com/all"}).get_json()
    assert re.fullmatch(r"H[A-Z]{10}", everything["id"]) and re.fullmatch(
        r"[0-9a-f]{64}", everything["secret"]
    )
    mine = client.post(
        "/events/webhooks", data={"url": "https://example.com/mine", "app": "myapp"}
    ).get_json()
    assert mine["app"] == "myapp"
    assert [h["id"] for h in client.get("/events/webhooks").get_json()] == [everything["id"]]
    listed = client.get("/events/webhooks?app=myapp").get_json()
    assert [h["id"] for h in listed] == [mine["id"]] and "secret" not in listed[0]
    for data, status, error in (
        ({}, 400, "url is required"),
        ({"url": "ftp://example.com/x"}, 400, "is not supported"),
        ({"url": "https://example.com/a b"}, 400, "without spaces"),
        ({"url": "https://example.com/x", "app": "ghost"}, 404, "app not found: ghost"),
    ):
        resp = client.post("/events/webhooks", data=data)
        assert resp.status_code == status and error in resp.get_json()["error"], data
    assert client.delete(f"/events/webhooks/{mine['id']}").status_code == 404  # it is the app's
    assert client.delete(f"/events/webhooks/{mine['id']}?app=myapp").data == b"ok\n"
    assert client.get("/events/webhooks?app=myapp").get_json() == []


def test_cli_rack_webhooks(cli_env):
    run = CliRunner().invoke
    added = run(main, ["rack", "webhooks", "add", "https://example.com/events"])
    assert added.exit_code == 0, added.output
    hook_id = re.search(r"Adding webhook\.\.\. OK, (H[A-Z]{10})", added.output).group(1)
    assert re.search(r"^Secret: [0-9a-f]{64} ", added.output, re.M)
    assert run(main, ["rack", "webhooks"]).output.splitlines() == [
        "ID           APP  URL", f"{hook_id}  *    https://example.com/events",
    ]  # fmt: skip
    assert run(main, ["rack", "webhooks", "remove", hook_id]).output == f"Removing {hook_id}... OK\n"
    assert run(main, ["rack", "webhooks"]).output.splitlines() == ["ID  APP  URL"]


@pytest.mark.docker
def test_events_arrive_signed_and_a_failed_delivery_is_retried(
    docker_stack, rack, client, enqueued, receiver, settings, tmp_path, monkeypatch
):
    env = worker_env_for(docker_stack.env, storage=settings.storage)
    monkeypatch.setattr(rack, "send_event", send_event_for(load_settings(env)))
    worker = start_worker(env, name="events", log_dir=tmp_path)
    try:
        client.post("/apps", data={"name": "myapp"})
        client.post("/apps", data={"name": "other"})
        hook = client.post("/events/webhooks", data={"url": receiver.url}).get_json()
        client.post("/events/webhooks", data={"url": receiver.url + "/other", "app": "other"})
        objects.put(rack, "myapp", "tmp/bad.tgz", io.BytesIO(b"not a tarball"))
        made = client.post("/apps/myapp/builds", data={"url": "object://myapp/tmp/bad.tgz"}).get_json()
        # The receiver failed the first delivery: the worker sends it again, after a backoff.
        wait_for(lambda: len(receiver.seen) >= 2, timeout=30, what="build:create, retried")
        assert receiver.actions()[:2] == ["build:create", "build:create"]
        (h1, b1, at1), (h2, b2, at2) = receiver.seen[:2]
        assert b1 == b2 and at2 - at1 >= 1.5  # the same event, retried no sooner than the backoff
        assert verify(hook["secret"], h1, b1) <= verify(hook["secret"], h2, b2)
        assert h1["Content-Type"] == "application/json"
        body = json.loads(b1)
        assert body["status"] == "success" and body["data"] == {
            "id": made["id"],
            "app": "myapp",
            "rack": "local",
        }
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT[\d:.]+Z", body["timestamp"])
        # The build fails (its source is no tarball): build:fail, with the reason as the message.
        done = pipeline.run_build(rack, made["id"], process="tests:1")
        assert done["status"] == "failed"
        release = client.post("/apps/myapp/releases", data={"env": "A=1"}).get_json()
        wait_for(lambda: len(receiver.seen) >= 4, timeout=30, what="build:fail and release:create")
        later = {json.loads(b)["action"]: (h, b) for h, b, _ in receiver.seen[2:]}
        assert set(later) == {"build:fail", "release:create"}
        for headers, raw in later.values():
            verify(hook["secret"], headers, raw)
        fail = json.loads(later["build:fail"][1])
        assert fail["status"] == "error" and fail["data"]["id"] == made["id"]
        assert fail["data"]["message"] == done["reason"]
        created = json.loads(later["release:create"][1])
        assert created["data"] == {"id": release["id"], "build_id": "", "app": "myapp", "rack": "local"}
        time.sleep(0.5)  # nothing else is on its way: app `other`'s hook receives none of myapp's events
        assert receiver.paths == ["/hook"] * 4
    finally:
        worker.stop()


def test_emit_never_raises_and_a_gone_hook_is_not_retried(rack):
    apps.create(rack, name="myapp")
    hook = events.add(rack, "http://127.0.0.1:9/none", app="myapp")

    def broken(hook_id: str, body: str) -> None:
        raise ConnectionError("the broker is away")

    rack.send_event = broken
    events.emit(rack, "build:create", app="myapp", data={"id": "BABCDEFGHIJ"})  # logged, not raised
    events.remove(rack, hook["id"], app="myapp")
    assert events.deliver(rack, hook["id"], "{}") is False


def test_convox_event_send_reaches_the_hooks(client, rack, monkeypatch):
    sent = []
    monkeypatch.setattr(rack, "send_event", lambda hook_id, body: sent.append((hook_id, json.loads(body))))
    client.post("/apps", data={"name": "myapp"})
    hook = client.post("/events/webhooks", data={"url": "https://example.com/e"}).get_json()
    form = {"action": "build:create", "data": "app=myapp&id=BABCDEFGHIJ", "error": "no space left"}
    assert client.post("/events", data=form).data == b"ok\n"
    assert [h for h, _ in sent] == [hook["id"]]
    body = sent[0][1]
    assert (body["action"], body["status"]) == ("build:create", "error")
    assert body["data"] == {"id": "BABCDEFGHIJ", "app": "myapp", "rack": "local", "message": "no space left"}
    for bad, error in (
        ({"action": "nope", "data": "app=myapp"}, "is not an event name"),
        ({"action": "build:create", "data": "app=ghost"}, "app not found: ghost"),
        ({"action": "build:create", "data": "%%%"}, "not a form-encoded map"),
    ):
        resp = client.post("/events", data=bad)
        assert resp.status_code in (400, 404) and error in resp.get_json()["error"], bad
    assert len(sent) == 1

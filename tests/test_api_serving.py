"""The API as production serves it (gunicorn, gevent workers): log followers cost connections, not
threads; slow and stalled clients are cut off; no client can keep others from being answered."""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import socket
import threading
import time

import pytest
import requests

from tests.helpers import Crowd, SimBuild, basic, rack_env, start_api, wait_for
from tests.test_api_logs import Follower


@pytest.fixture
def serve(stack, settings, tmp_path):
    """Start the API under gunicorn with these settings; stopped at the end."""
    started = []

    def start(**limits):
        api = start_api(rack_env(stack.env, storage=settings.storage, **limits), log_dir=tmp_path)
        api.password = settings.password  # type: ignore[attr-defined]
        started.append(api)
        return api

    yield start
    for api in started:
        api.stop()


SAMPLES = 150  # answers of each request measured under the followers: enough for a p99 to mean something


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


class Load:
    """Ask GET /apps and POST builds in turn from `clients` threads until stopped, recording each answer's
    status and time."""

    def __init__(self, api, url: str, *, clients: int) -> None:
        self.api, self.url, self.auth = api, url, basic(api.password)
        self.times: dict[str, list[float]] = {"GET /apps": [], "POST builds": []}
        self.statuses: list[int] = []
        self.done = threading.Event()
        self.threads = [threading.Thread(target=self.run, daemon=True) for _ in range(clients)]
        for thread in self.threads:
            thread.start()

    def samples(self) -> int:
        """The fewest answers recorded of one kind of request."""
        return min(len(t) for t in self.times.values())

    def stop(self) -> None:
        self.done.set()
        for thread in self.threads:
            thread.join(30)

    def run(self) -> None:
        session = requests.Session()
        while not self.done.is_set():
            for what, call in (
                ("GET /apps", lambda: session.get(f"{self.api.url}/apps", headers=self.auth, timeout=10)),
                (
                    "POST builds",
                    lambda: session.post(
                        f"{self.api.url}/apps/logs/builds",
                        data={"url": self.url},
                        headers=self.auth,
                        timeout=10,
                    ),
                ),
            ):
                began = time.monotonic()
                self.statuses.append(call().status_code)
                self.times[what].append(time.monotonic() - began)
            time.sleep(0.02)


def _follow(api_url: str, password: str, app: str, build_id: str, count: int, out) -> None:
    """In a child process: follow a log `count` times at once (websocket and chunked in turn)."""
    crowd = Crowd(api_url, password, app, build_id, count)
    crowd.connect(60)
    out.put("connected")
    out.put([(ended, hashlib.sha256(data).hexdigest()) for ended, data in crowd.run(120)])


def test_300_followers_get_every_byte_while_the_api_keeps_answering(serve, rack, sim):
    api = serve(connections_per_address=1000)
    build: SimBuild = sim()
    build.start()
    for _ in range(6):  # each API process loads Celery on its first enqueue: not what is measured here
        requests.post(
            f"{api.url}/apps/logs/builds",
            data={"url": "object://logs/tmp/src.tgz"},
            headers=basic(api.password),
        )
    # the followers run in child processes, so that the test's own threads do not slow its measurements
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    children = [
        ctx.Process(target=_follow, args=(api.url, api.password, "logs", build.id, 150, queue), daemon=True)
        for _ in range(2)
    ]
    for child in children:
        child.start()
    assert [queue.get(timeout=60) for _ in children] == ["connected", "connected"]
    load = Load(api, "object://logs/tmp/src.tgz", clients=4)
    writer = build.log.writer()  # batched as a worker writes: the lines of each few ms in one entry
    # lines at about a thousand a second, followed all along, until the requests made meanwhile are
    # enough for a p99 (at least three seconds of them; at most a minute's)
    lines = 0
    while lines < 3000 or (load.samples() < SAMPLES and lines < 60_000):
        writer.write(f"Step {lines}: RUN echo héllo ✓ {'x' * (lines % 50)}\n")
        lines += 1
        if lines % 30 == 0:
            time.sleep(0.03)
    writer.close()
    streamed = {what: len(t) for what, t in load.times.items()}
    # still short (a very busy machine): the requests go on with the followers attached, the log quiet
    wait_for(lambda: load.samples() >= SAMPLES, timeout=120, what=f"{SAMPLES} answers of each request")
    load.stop()
    build.finish()
    expected = build.expected()
    results = [result for _ in children for result in queue.get(timeout=120)]
    for child in children:
        child.join(10)
    report = ", ".join(
        f"{what} p50 {pct(t, 0.5) * 1000:.0f} ms p99 {pct(t, 0.99) * 1000:.0f} ms over {len(t)}"
        f" ({streamed[what]} while lines streamed)"
        for what, t in load.times.items()
    )
    load_avg = " ".join(f"{n:.2f}" for n in os.getloadavg())
    print(f"\n300 followers (150 websocket, 150 chunked), {len(expected)} bytes in {lines} lines: {report};")
    print(f"machine load average {load_avg} (1, 5, 15 min)")
    digest = hashlib.sha256(expected).hexdigest()
    assert len(results) == 300
    assert sum(1 for ended, got in results if ended and got == digest) == 300
    assert load.samples() >= SAMPLES and set(load.statuses) == {200}


def test_followers_past_the_per_process_cap_get_503_and_retry_after(serve, rack, sim):
    api = serve(log_followers_max=3, api_workers=1)
    build: SimBuild = sim()
    build.start()
    held = [Follower(api, build, ws=i == 0) for i in range(3)]
    for follower in held:
        assert follower.connected.wait(10)
    path = f"{api.url}/apps/logs/builds/{build.id}/logs"
    refused = requests.get(path, headers=basic(api.password), timeout=10)
    assert refused.status_code == 503
    assert refused.headers["Retry-After"] == "5"
    assert "already streams 3 logs" in refused.json()["error"]
    assert requests.get(f"{api.url}/apps", headers=basic(api.password), timeout=10).status_code == 200
    build.write("the end\n")
    build.finish()
    for follower in held:
        assert follower.result() == b"the end\n"
    again = wait_for(
        lambda: (r := requests.get(path, headers=basic(api.password), timeout=10)).status_code == 200 and r,
        timeout=10,
        what="a slot freed by the followers that ended",
    )
    assert again.content == b"the end\n"


def connect_from(address: str, port: int) -> socket.socket:
    sock = socket.socket()
    sock.bind((address, 0))
    sock.settimeout(30)
    sock.connect(("127.0.0.1", port))
    return sock


class Slow(threading.Thread):
    """A client that sends `head`, then a byte every `every` seconds, until the server answers or hangs up."""

    def __init__(self, address: str, port: int, head: bytes, drip: bytes, every: float) -> None:
        super().__init__(daemon=True)
        self.answer: bytes | None = None
        self.sock = connect_from(address, port)
        self.head, self.drip, self.every = head, drip, every
        self.start()

    def run(self) -> None:
        try:
            self.sock.sendall(self.head)
            for byte in self.drip:
                self.sock.setblocking(False)
                try:
                    if (data := self.sock.recv(65536)) is not None:
                        self.answer = data
                        return
                except BlockingIOError:
                    pass
                self.sock.setblocking(True)
                self.sock.sendall(bytes([byte]))
                time.sleep(self.every)
            self.answer = self.sock.recv(65536)
        except OSError:
            self.answer = b""  # reset by the server
        finally:
            self.sock.close()


def test_slow_headers_and_stalled_uploads_are_cut_off_while_others_are_answered(serve, rack):
    api = serve(header_timeout=2, idle_timeout=3, connections_per_address=40)
    port = int(api.url.rsplit(":", 1)[1])
    auth = basic(api.password)
    assert requests.post(f"{api.url}/apps", data={"name": "slow"}, headers=auth).status_code == 200
    slow = [
        Slow("127.0.0.2", port, b"GET /check HTTP/1.1\r\n", b"X-Slow: " + b"a" * 200, 0.5) for _ in range(50)
    ]
    upload = (
        "POST /apps/slow/objects/tmp/stalled.tgz HTTP/1.1\r\nHost: x\r\n"
        f"Authorization: {auth['Authorization']}\r\nContent-Length: 1000000\r\n\r\n"
    ).encode() + b"x" * 1000
    stalled = [Slow("127.0.0.3", port, upload, b"", 0) for _ in range(20)]
    statuses, began = [], time.monotonic()
    while any(c.is_alive() for c in slow + stalled) and time.monotonic() - began < 30:
        statuses.append(requests.get(f"{api.url}/check", timeout=5).status_code)
        statuses.append(requests.get(f"{api.url}/apps", headers=auth, timeout=5).status_code)
        time.sleep(0.1)
    print(f"\n{len(statuses)} requests answered while 50 slow-header clients and 20 stalled uploads were cut")
    assert set(statuses) == {200}
    assert len(statuses) >= 10
    for client in slow + stalled:
        client.join(5)
        assert not client.is_alive(), "a slow client was never cut off"
    # the slow-header clients were dropped (or refused at the per-address cap), never answered 200
    assert all(not c.answer or c.answer.startswith(b"HTTP/1.1 503") for c in slow), [
        c.answer[:40] for c in slow
    ]
    assert any(c.answer == b"" for c in slow)  # cut off at the header timeout
    assert all(c.answer.startswith(b"HTTP/1.1 400") for c in stalled), [c.answer[:60] for c in stalled]
    assert requests.head(f"{api.url}/apps/slow/objects/tmp/stalled.tgz", headers=auth).status_code == 404


def test_one_address_holds_at_most_its_share_of_connections(serve, rack):
    api = serve(connections_per_address=3, api_workers=1)
    port = int(api.url.rsplit(":", 1)[1])
    held = [connect_from("127.0.0.4", port) for _ in range(3)]
    time.sleep(0.2)  # let the server take them
    extra = connect_from("127.0.0.4", port)
    answer = extra.recv(65536)
    assert answer.startswith(b"HTTP/1.1 503"), answer
    assert b"Retry-After: 5" in answer
    assert requests.get(f"{api.url}/check", timeout=5).status_code == 200  # another address is served
    for sock in [*held, extra]:
        sock.close()

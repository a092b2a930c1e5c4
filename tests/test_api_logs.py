"""Build logs over the API on the real stack: websocket and chunked followers, offsets, endings, gunicorn."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import requests
import websocket

from rack import apps
from rack.sql import builds as sql
from tests.helpers import SimBuild, basic, wait_for

CHECKOUT = Path(__file__).resolve().parents[1]


class Follower(threading.Thread):
    """Read a build's log in a thread, over a websocket or chunked HTTP, recording what arrived."""

    def __init__(self, server, build: SimBuild, *, ws: bool, offset: int | None = 0, stop_after: int = 0):
        super().__init__(daemon=True)
        self.server, self.build, self.ws = server, build, ws
        self.offset, self.stop_after = offset, stop_after
        self.data = bytearray()
        self.ended = False  # the websocket's empty binary frame, or the chunked body's clean end
        self.connected = threading.Event()
        self.start()

    def run(self) -> None:
        path = f"/apps/{self.build.app}/builds/{self.build.id}/logs"
        if self.ws:
            conn = ws_connect(self.server, path, *([] if self.offset is None else [f"Offset: {self.offset}"]))
            self.connected.set()
            try:
                while True:
                    opcode, data = conn.recv_data()
                    if opcode == websocket.ABNF.OPCODE_BINARY and data == b"":
                        self.ended = True
                        return
                    self.data += data
                    if self.stop_after and len(self.data) >= self.stop_after:
                        return
            finally:
                conn.close()
        params = {} if self.offset is None else {"offset": self.offset}
        auth = basic(self.server.password)
        with requests.get(self.server.url + path, params=params, headers=auth, stream=True, timeout=30) as r:
            self.connected.set()
            self.status = r.headers.get("X-Build-Status")
            for chunk in r.iter_content(chunk_size=None):
                self.data += chunk
                if self.stop_after and len(self.data) >= self.stop_after:
                    return
            self.ended = True

    def result(self, timeout: float = 20) -> bytes:
        self.join(timeout)
        assert not self.is_alive(), "the follower did not end"
        return bytes(self.data)


def ws_connect(server, path: str, *headers: str, auth: bool = True) -> websocket.WebSocket:
    """Open a websocket to the API as Convox's client does: Basic auth and options in headers."""
    if auth:
        headers = (f"Authorization: {basic(server.password)['Authorization']}", *headers)
    return websocket.create_connection(
        server.url.replace("http", "ws") + path, header=list(headers), timeout=10
    )


def char_boundary(data: bytes, offset: int) -> int:
    """Move an offset back to a UTF-8 character's start: text frames cannot carry half a character."""
    while offset and data[offset] & 0xC0 == 0x80:
        offset -= 1
    return offset


@pytest.mark.parametrize("ws", [True, False], ids=["websocket", "chunked"])
def test_followers_before_during_and_after_get_the_same_bytes(live_server, sim, ws):
    build = sim()
    early = Follower(live_server, build, ws=ws)
    early.connected.wait(5)
    build.start()
    writer = threading.Thread(target=build.write_lines, args=(0, 300, 0.002))
    writer.start()
    wait_for(lambda: len(early.data) > 1000)
    middle = Follower(live_server, build, ws=ws)
    writer.join()
    build.write("a last line with no newline ✓")
    build.finish()
    late = Follower(live_server, build, ws=ws)
    expected = build.expected()
    assert len(expected) > 10_000
    for follower in (early, middle, late):
        assert follower.result() == expected
        assert follower.ended


@pytest.mark.parametrize("ws", [True, False], ids=["websocket", "chunked"])
def test_a_cut_follower_resumes_with_offset_without_loss_or_repeat(live_server, sim, ws):
    build = sim()
    build.start()
    writer = threading.Thread(target=build.write_lines, args=(0, 400, 0.002))
    writer.start()
    first = Follower(live_server, build, ws=ws, stop_after=3001)  # cut while lines still arrive
    got = first.result()
    assert len(got) >= 3001 and writer.is_alive()
    second = Follower(live_server, build, ws=ws, offset=len(got))
    writer.join()
    build.finish()
    assert got + second.result() == build.expected()
    # An offset inside an entry is sliced, from the stored object as from the stream.
    inside = char_boundary(build.expected(), len(got) - 7)
    assert Follower(live_server, build, ws=ws, offset=inside).result() == build.expected()[inside:]


def test_a_build_that_ends_without_an_end_entry_still_ends_the_follow(live_server, sim):
    build = sim()
    build.start()
    build.write_lines(0, 20)
    follower = Follower(live_server, build, ws=True)
    wait_for(lambda: len(follower.data) == len(build.expected()))
    build.write_lines(20, 25)
    build.finish("failed", reason="platform:worker: the worker stopped", store=False, end=False)
    assert follower.result(timeout=6) == build.expected()
    assert follower.ended


def test_an_error_mid_stream_is_an_error_frame_then_the_end(live_server, sim):
    build = sim()
    build.start()
    build.write_lines(0, 3)
    follower = Follower(live_server, build, ws=True)
    wait_for(lambda: len(follower.data) == len(build.expected()))
    apps.delete(build.rack, "logs")  # the build goes with it: the next look at its row fails
    assert follower.result(timeout=6) == build.expected() + b"ERROR: app not found: logs\n"
    assert follower.ended


def test_a_waiting_build_says_so_unless_an_offset_is_given(live_server, sim, client):
    build = sim()
    bare = Follower(live_server, build, ws=True, offset=None)
    counted = Follower(live_server, build, ws=True, offset=0)
    wait_for(lambda: bare.data)
    assert bytes(bare.data) == f"waiting for a worker to start build {build.id}…\n".encode()
    with build.rack.db.transaction() as conn:  # cancelled before a worker took it: no log at all
        sql.finish(conn, id=build.id, status="failed", reason="cancelled")
    assert bare.result(timeout=6).endswith(f"build {build.id} failed -- no build logs available\n".encode())
    assert counted.result(timeout=6) == b"" and counted.ended
    resp = client.get(f"/apps/logs/builds/{build.id}/logs")  # chunked text for a person says so too
    assert resp.headers["X-Build-Status"] == "failed"
    assert resp.data == f"build {build.id} failed -- no build logs available\n".encode()
    resp = client.get(f"/apps/logs/builds/{build.id}/logs?offset=0")  # a client counting bytes: log only
    assert resp.data == b""


def test_follow_false_returns_what_there_is_now(live_server, sim, client):
    build = sim()
    build.start()
    build.write_lines(0, 10)
    resp = client.get(f"/apps/logs/builds/{build.id}/logs?follow=false")
    assert resp.status_code == 200 and resp.headers["X-Build-Status"] == "running"
    assert resp.data == build.expected()
    resp = client.get(f"/apps/logs/builds/{build.id}/logs", headers={"Follow": "false", "Offset": "5"})
    assert resp.data == build.expected()[5:]
    conn = ws_connect(live_server, f"/apps/logs/builds/{build.id}/logs", "Follow: false")
    frames = []
    while not frames or frames[-1] != (websocket.ABNF.OPCODE_BINARY, b""):
        frames.append(conn.recv_data())
    conn.close()
    assert b"".join(data for _, data in frames) == build.expected()
    assert all(op == websocket.ABNF.OPCODE_TEXT for op, _ in frames[:-1])


def test_unknown_builds_and_bad_offsets_are_refused_before_streaming(live_server, sim, client):
    build = sim()
    assert client.get("/apps/logs/builds/BNOTTHEREXX/logs").status_code == 404
    assert client.get(f"/apps/nope/builds/{build.id}/logs").status_code == 404
    assert client.get(f"/apps/logs/builds/{build.id}/logs?offset=-3").status_code == 400
    # A websocket is upgraded, then told the error and ended, as Convox's client expects.
    for path, headers, error in (
        ("/apps/logs/builds/BNOTTHEREXX/logs", (), "build not found: BNOTTHEREXX"),
        (f"/apps/nope/builds/{build.id}/logs", (), "app not found: nope"),
        (f"/apps/logs/builds/{build.id}/logs", ("Offset: -3",), "offset must be a byte count of 0 or more"),
    ):
        conn = ws_connect(live_server, path, *headers)
        frames = [conn.recv_data(), conn.recv_data()]
        conn.close()
        assert frames[0][0] == websocket.ABNF.OPCODE_TEXT
        assert frames[0][1].decode().startswith(f"ERROR: {error}") and frames[0][1].endswith(b"\n")
        assert frames[1] == (websocket.ABNF.OPCODE_BINARY, b"")
    with pytest.raises(websocket.WebSocketBadStatusException) as err:
        ws_connect(live_server, f"/apps/logs/builds/{build.id}/logs", auth=False)
    assert err.value.status_code == 401


def test_a_follower_that_leaves_a_quiet_log_frees_its_server_thread(live_server, sim):
    build = sim()
    build.start()
    build.write_lines(0, 5)
    serving = lambda: sum("process_request_thread" in t.name for t in threading.enumerate())  # noqa: E731
    path = f"/apps/logs/builds/{build.id}/logs"
    with requests.get(live_server.url + path, headers=basic(live_server.password), stream=True) as resp:
        chunks = resp.iter_content(chunk_size=None)  # kept: a dropped iterator closes the connection
        next(chunks)
        conn = ws_connect(live_server, path)
        conn.recv()
        assert serving() == 2
        conn.close()
    wait_for(lambda: serving() == 0, timeout=3)  # no more lines come: only noticing the client ends them


def test_websocket_and_chunked_under_gunicorn(gunicorn_server, sim):
    build = sim()
    followers = [Follower(gunicorn_server, build, ws=ws) for ws in (True, False, True)]
    for follower in followers:
        follower.connected.wait(5)
    build.start()
    build.write_lines(0, 2000)
    build.finish()
    expected = build.expected()
    inside = char_boundary(expected, 1234)
    followers.append(Follower(gunicorn_server, build, ws=True, offset=inside))
    for follower in followers[:3]:
        assert follower.result() == expected and follower.ended
    assert followers[3].result() == expected[inside:] and followers[3].ended

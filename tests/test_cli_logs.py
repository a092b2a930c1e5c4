"""`convox builds logs` and `follow_build` against the live API: exit status, --no-follow, resuming."""

from __future__ import annotations

import io
import socket
import threading
import time

import click
import pytest
from click.testing import CliRunner

from cli.client import RackClient
from cli.logs import follow_build
from cli.main import main
from cli.settings import Endpoint


class Relay:
    """A TCP relay in front of the live server that a test can cut, take down and bring back (a restart)."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self.socks: list[socket.socket] = []
        self.connections = 0
        self.up()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def up(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", self.port))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._accept, args=(self.listener,), daemon=True).start()

    def down(self) -> None:
        """Refuse new connections and cut every open one, as a stopped server does."""
        self.listener.shutdown(socket.SHUT_RDWR)  # wakes the thread blocked in accept(), freeing the port
        self.listener.close()
        for sock in list(self.socks):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self.socks.clear()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            self.connections += 1
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            self.socks += [client, upstream]
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


class Sink(io.BytesIO):
    """Collect the log; call `hook` once when `at` bytes have arrived."""

    def __init__(self, at: int = 0, hook=None) -> None:
        super().__init__()
        self.at, self.hook = at, hook

    def write(self, data) -> int:
        n = super().write(data)
        if self.hook and self.tell() >= self.at:
            hook, self.hook = self.hook, None
            hook()
        return n


def run(*args: str):
    return CliRunner().invoke(main, ["builds", "logs", *args, "-a", "logs"])


def test_a_complete_build_prints_its_log_and_exits_zero(cli_env, sim):
    build = sim()
    build.start()
    build.write_lines(0, 50)
    build.finish()
    result = run(build.id)
    assert result.exit_code == 0, result.stderr
    assert result.stdout_bytes == build.expected()
    assert result.stderr == ""


def test_a_failed_build_exits_one_with_its_reason(cli_env, sim):
    build = sim()
    build.start()
    build.write_lines(0, 5)
    build.finish("failed", reason="build:user:dockerfile: the RUN step exited 2")
    result = run(build.id)
    assert result.exit_code == 1
    assert result.stdout_bytes == build.expected()
    assert result.stderr == "Error: build failed: build:user:dockerfile: the RUN step exited 2\n"


def test_no_follow_prints_what_there_is_and_exits_zero(cli_env, sim):
    build = sim()
    build.start()
    build.write_lines(0, 7)
    started = time.monotonic()
    result = run(build.id, "--no-follow")
    assert result.exit_code == 0 and result.stdout_bytes == build.expected()
    assert time.monotonic() - started < 3
    assert run("BNOTTHEREXX").exit_code == 1


def test_follow_waits_for_a_worker_then_follows_to_the_end(live_server, sim, capsys):
    build = sim()
    client = RackClient(Endpoint(live_server.url, live_server.password))
    out = Sink()
    result: list[dict] = []
    follower = threading.Thread(target=lambda: result.append(follow_build(client, "logs", build.id, out=out)))
    follower.start()
    time.sleep(0.3)
    build.start()
    build.write_lines(0, 100, pause=0.001)
    build.finish()
    follower.join(10)
    assert result[0]["status"] == "complete"
    assert out.getvalue() == build.expected()
    assert capsys.readouterr().err == f"waiting for a worker to start build {build.id}…\n"


@pytest.mark.parametrize("restart", [False, True], ids=["connection-cut", "server-down-and-back"])
def test_a_dropped_stream_resumes_with_no_lost_or_repeated_byte(live_server, sim, restart):
    relay = Relay(live_server.server.server_port)
    build = sim()
    build.start()
    build.write_lines(0, 100)
    cut = threading.Event()

    def drop() -> None:
        relay.down()
        if not restart:
            relay.up()
        cut.set()

    client = RackClient(Endpoint(relay.url, live_server.password))
    out = Sink(at=len(build.expected()) // 2, hook=drop)
    result: list[dict] = []
    follower = threading.Thread(target=lambda: result.append(follow_build(client, "logs", build.id, out=out)))
    follower.start()
    assert cut.wait(10)
    build.write_lines(100, 300, pause=0.001)  # lines written while the follower is away
    if restart:
        time.sleep(1)  # the follower's retries meet a refused connection meanwhile
        relay.up()
    build.write_lines(300, 400)
    build.finish()
    follower.join(20)
    assert result and result[0]["status"] == "complete"
    assert out.getvalue() == build.expected()
    assert relay.connections >= 3  # the first stream, the build check, the resumed stream


def test_an_unreachable_rack_gives_up_with_a_clear_error():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here once the socket is closed
    client = RackClient(Endpoint(f"http://127.0.0.1:{port}", "pw"))
    started = time.monotonic()
    with pytest.raises(click.ClickException) as err:
        follow_build(client, "logs", "BABCDEFGHIJ", out=Sink(), attempts=3, backoff=0.05)
    assert time.monotonic() - started < 5
    assert "did not answer 3 times in a row" in err.value.message
    assert f"127.0.0.1:{port}" in err.value.message

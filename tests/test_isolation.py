"""A build's RUN steps reach none of the rack's services nor the host, only the egress side."""

from __future__ import annotations

import dataclasses
import io
import re
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from rack import apps, objects
from rack.builds import record as builds
from rack.config import build_network_mode, load_settings
from rack.context import Rack
from rack.pipeline.run import run_build
from rack_stack.netns import Namespace, listen_inside
from tests.helpers import tarball

# A probe's answer as either builder prints it: `probe redis: closed`, or `#6 0.166 probe redis: closed`.
PROBE = re.compile(r"^(?:#\d+ [\d.]+ )?probe (\S+): (open|closed)$", re.M)


class Listener:
    """A TCP listener that counts the connections it accepted."""

    def __init__(self, server: socket.socket) -> None:
        self.server = server
        self.port = server.getsockname()[1]
        self.accepted = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            self.accepted += 1
            conn.close()

    def close(self) -> None:
        self.server.close()


def _listen(host: str) -> Listener:
    server = socket.socket()
    server.bind((host, 0))
    server.listen(16)
    return Listener(server)


@contextmanager
def internet(key: str) -> Iterator[tuple[Namespace, Listener]]:
    """A namespace of the test's own, standing for the internet, with a listener on its address."""
    ns = Namespace.for_key(key)
    ns.create()
    try:
        listener = Listener(listen_inside(ns.path, 0, host=ns.ns_ip))
        try:
            yield ns, listener
        finally:
            listener.close()
    finally:
        ns.delete()


def _probe_build(rack: Rack, app: str, targets: dict[str, tuple[str, int]]) -> tuple[dict, str]:
    """Build an image whose RUN steps try a TCP connection to each target; return the build and its log."""
    # busybox nc has no -z: it exits 1 when it can not connect, else it holds the connection until
    # `timeout` ends it (143) or the server closes it (0).
    steps = "".join(
        f"RUN timeout 4 nc -w 2 {host} {port} </dev/null >/dev/null 2>&1; "
        f"if [ $? = 1 ]; then echo 'probe {name}: closed'; else echo 'probe {name}: open'; fi\n"
        for name, (host, port) in targets.items()
    )
    source = {"convox.yml": "services:\n  web:\n    build: .\n", "Dockerfile": f"FROM busybox\n{steps}"}
    apps.create(rack, name=app)
    url = objects.put(rack, app, "tmp/source.tgz", io.BytesIO(tarball(source)))
    row = run_build(rack, builds.create(rack, app, url=url)["id"], process="tests:1")
    _, key = objects.parse_url(row["logs"])
    with objects.open_object(rack, app, key) as fh:
        return row, fh.read().decode()


@pytest.mark.docker
@pytest.mark.parametrize("builder", ["buildkit", "classic"])
def test_a_build_reaches_no_service_of_the_rack_nor_the_host_only_egress(
    docker_stack, rack, live_server, builder, monkeypatch
):
    monkeypatch.setattr(rack, "settings", dataclasses.replace(rack.settings, builder=builder))
    engine_ns = docker_stack.services["dockerd"].namespace()
    loopback = _listen("127.0.0.1")
    any_address = _listen("0.0.0.0")  # so the veth's host end would answer, but for the host's rules
    ports = docker_stack.ports
    targets = {
        "postgres": ("127.0.0.1", ports["postgres"]),
        "redis": ("127.0.0.1", ports["redis"]),
        "registry": ("127.0.0.1", ports["registry"]),
        "api": ("127.0.0.1", live_server.server.server_port),
        "loopback": ("127.0.0.1", loopback.port),
        "veth-host": (engine_ns.host_ip, any_address.port),
        "veth-host-registry": (engine_ns.host_ip, ports["registry"]),
    }
    try:
        with internet(f"{docker_stack.home}#internet") as (outside, world):
            targets["internet"] = (outside.ns_ip, world.port)
            row, log = _probe_build(rack, f"probes-{builder}", targets)
            assert world.accepted >= 1
    finally:
        loopback.close()
        any_address.close()
    assert row["status"] == "complete", row["reason"]
    assert row["images"]["web"]["digest"].startswith("sha256:")  # pushed through the engine's forwarder
    results = dict(PROBE.findall(log))
    assert results == {**dict.fromkeys(targets, "closed"), "internet": "open"}, log
    assert (loopback.accepted, any_address.accepted) == (0, 0)


@pytest.mark.docker
def test_build_network_none_reaches_not_even_the_egress_side(docker_stack, rack, settings):
    env = {**docker_stack.env, "RACK_STORAGE": settings.storage, "RACK_BUILD_NETWORK": "none"}
    offline = Rack(load_settings(env), enqueue_build=lambda build_id: None)
    try:
        with internet(f"{docker_stack.home}#internet-none") as (outside, world):
            row, log = _probe_build(offline, "offline", {"internet": (outside.ns_ip, world.port)})
            assert world.accepted == 0
    finally:
        offline.close()
    assert row["status"] == "complete", row["reason"]
    assert dict(PROBE.findall(log)) == {"internet": "closed"}, log


def test_the_build_network_setting_names_one_network_mode_for_every_builder():
    modes = {
        name: build_network_mode(load_settings({"RACK_PASSWORD": "x", "RACK_BUILD_NETWORK": name}))
        for name in ("isolated", "none", "host")
    }
    assert modes == {"isolated": "default", "none": "none", "host": "host"}
    assert build_network_mode(load_settings({"RACK_PASSWORD": "x"})) == "default"
    with pytest.raises(Exception, match="RACK_BUILD_NETWORK must be one of isolated, none, host"):
        load_settings({"RACK_PASSWORD": "x", "RACK_BUILD_NETWORK": "bridge"})

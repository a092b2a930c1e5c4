"""Several worker hosts on one machine: each a network namespace with its own dockerd, joined by a bridge.

The workers themselves run on the machine's network (they reach Postgres, Redis and the object store on
loopback); each one's engine, and so every build step it runs, lives in a namespace of its own that sees
none of the machine's loopback services. The only way out of a namespace is a relay to the registry, which
is what a build needs (push, pull, `FROM` the rack's images): inside each namespace it listens on the
registry's own loopback address, so image names are the same on every host and the engine (and BuildKit)
treat it as the local registry it is; it forwards to a relay on the bridge, which forwards to the registry.

Names and addresses derive from a key (a port of the stack that uses them), so stacks side by side do not
collide: namespaces `rkh<key>-<n>`, bridge `rkb<key>`, subnet 10.<150+key%50>.<key//50%256>.0/24.
"""

from __future__ import annotations

import ipaddress
import json
import selectors
import shutil
import socket
import subprocess
import sys
import threading
from pathlib import Path

from rack_stack import procs
from rack_stack.dockerd import NO_NETWORK_OF_ITS_OWN, Dockerd
from rack_stack.stack import Stack


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(["ip", *args], capture_output=True, text=True)
    if check and result.returncode != 0:
        raise procs.StartError(f"ip {' '.join(args)} failed: {result.stderr.strip()}")
    return result


class Network:
    """A bridge on the machine and `count` namespaces attached to it, each with one address."""

    def __init__(self, key: int, count: int) -> None:
        self.key, self.count = key, count
        self.subnet = ipaddress.ip_network(f"10.{150 + key % 50}.{key // 50 % 256}.0/24")
        self.bridge = f"rkb{key}"
        self.namespaces = [f"rkh{key}-{n}" for n in range(count)]

    @property
    def gateway(self) -> str:
        """Return the machine's address on the bridge, which every namespace reaches."""
        return str(self.subnet.network_address + 1)

    def address(self, n: int) -> str:
        return str(self.subnet.network_address + 2 + n)

    def create(self) -> Network:
        """Make the bridge and the namespaces (refusing a subnet some route of the machine already uses)."""
        routes = json.loads(_ip("-j", "route").stdout or "[]")
        for route in routes:
            dst = route.get("dst", "")
            if dst and dst != "default" and ipaddress.ip_network(dst, strict=False).overlaps(self.subnet):
                raise procs.StartError(
                    f"{self.subnet} is in use on this machine ({dst} via {route.get('dev')})"
                )
        try:
            _ip("link", "add", self.bridge, "type", "bridge")
            _ip("addr", "add", f"{self.gateway}/{self.subnet.prefixlen}", "dev", self.bridge)
            _ip("link", "set", self.bridge, "up")
            for n, ns in enumerate(self.namespaces):
                outside, inside = f"rkv{self.key}-{n}", f"rkp{self.key}-{n}"
                _ip("netns", "add", ns)
                _ip("link", "add", outside, "type", "veth", "peer", "name", inside)
                _ip("link", "set", inside, "netns", ns)
                _ip("link", "set", outside, "master", self.bridge, "up")
                _ip("-n", ns, "addr", "add", f"{self.address(n)}/{self.subnet.prefixlen}", "dev", inside)
                _ip("-n", ns, "link", "set", inside, "up")
                _ip("-n", ns, "link", "set", "lo", "up")
        except procs.StartError:
            self.destroy()
            raise
        return self

    def destroy(self) -> None:
        """Remove the namespaces (their veths go with them) and the bridge; quiet about what is gone."""
        for ns in self.namespaces:
            _ip("netns", "delete", ns, check=False)
        _ip("link", "delete", self.bridge, check=False)


class Relay:
    """Relay TCP connections from an address on the bridge to a service on the machine's loopback."""

    def __init__(
        self, listen_host: str, target_port: int, *, listen_port: int = 0, target_host: str = "127.0.0.1"
    ):
        self.target = (target_host, target_port)
        self.server = socket.create_server((listen_host, listen_port))
        self.address = f"{listen_host}:{self.server.getsockname()[1]}"
        self._stop = threading.Event()
        threading.Thread(target=self._accept, name="rack-relay", daemon=True).start()

    def _accept(self) -> None:
        self.server.settimeout(0.5)
        while not self._stop.is_set():
            try:
                client, _ = self.server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self._pipe, args=(client,), daemon=True).start()

    def _pipe(self, client: socket.socket) -> None:
        try:
            upstream = socket.create_connection(self.target, timeout=10)
        except OSError:
            client.close()
            return
        pair = {client: upstream, upstream: client}
        sel = selectors.DefaultSelector()
        for sock in pair:
            sock.setblocking(False)
            sel.register(sock, selectors.EVENT_READ)
        try:
            while not self._stop.is_set():
                for key, _ in sel.select(timeout=0.5):
                    data = key.fileobj.recv(1 << 16)  # type: ignore[union-attr]
                    if not data:
                        return
                    pair[key.fileobj].setblocking(True)  # type: ignore[index]
                    pair[key.fileobj].sendall(data)  # type: ignore[index]
                    pair[key.fileobj].setblocking(False)  # type: ignore[index]
        except OSError:
            return
        finally:
            sel.close()
            client.close()
            upstream.close()

    def close(self) -> None:
        self._stop.set()
        self.server.close()


def _relay_in(netns: str, *, port: int, target: str, log: Path) -> int:
    """Start a relay inside `netns` from its 127.0.0.1:`port` to `target` (host:port); return its pid."""
    host, target_port = target.rsplit(":", 1)
    argv = ["nsenter", f"--net=/var/run/netns/{netns}", sys.executable, "-m", "rack_stack.hosts", "relay",
            str(port), host, target_port]  # fmt: skip
    pid = procs.spawn(argv, log=log, env={"PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    if not procs.wait_for(lambda: b"relaying" in log.read_bytes() or not procs.alive(pid), timeout=15):
        raise procs.StartError(f"the relay in {netns} did not start:\n{procs.log_tail(log)}")
    if not procs.alive(pid):
        raise procs.StartError(f"the relay in {netns} exited:\n{procs.log_tail(log)}")
    return pid


class NamespacedDockerd(Dockerd):
    """dockerd started inside a network namespace (nsenter: `ip netns exec` remounts /sys, which fails)."""

    def __init__(self, stack: Stack, *, netns: str) -> None:
        super().__init__(stack)
        self.netns = netns

    def launch(self) -> int:
        argv = ["nsenter", f"--net=/var/run/netns/{self.netns}", *self.dockerd_argv(), *NO_NETWORK_OF_ITS_OWN]
        return procs.spawn(argv, log=self.log, cwd=self.home)


class Hosts:
    """`count` worker hosts: a Network, a relay to the registry, and an engine per namespace.

    `registry` is the address every host (and so every worker's RACK_REGISTRY) uses for the registry.
    """

    # The engines have no bridge: a build's RUN steps get the namespace's own network, which reaches the
    # registry relay and nothing of the machine. Workers on these engines set RACK_BUILD_NETWORK to this.
    build_network = "host"

    def __init__(self, root: Path, *, key: int, count: int, registry_port: int) -> None:
        self.root = root
        self.network = Network(key, count)
        self.registry_port = registry_port
        self.relay: Relay | None = None
        self.relays: list[int] = []  # pids of the relays inside the namespaces
        self.engines: list[Stack] = []

    @property
    def registry(self) -> str:
        """Return the registry's address, the same on the machine and on every host."""
        return f"127.0.0.1:{self.registry_port}"

    def start(self) -> Hosts:
        self.network.create()
        try:
            self.relay = Relay(self.network.gateway, self.registry_port)
            for n, ns in enumerate(self.network.namespaces):
                home = self.root / f"host{n}"
                home.mkdir(parents=True, exist_ok=True)
                home.chmod(0o755)
                self.relays.append(
                    _relay_in(ns, port=self.registry_port, target=self.relay.address, log=home / "relay.log")
                )
                engine = Stack(home, fast=True)
                engine.services["dockerd"] = NamespacedDockerd(engine, netns=ns)
                self.engines.append(engine)
            errors: list[str] = []
            threads = [threading.Thread(target=self._start, args=(e, errors)) for e in self.engines]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            if errors:
                raise procs.StartError("\n".join(errors))
        except BaseException:
            self.stop()
            raise
        return self

    @staticmethod
    def _start(engine: Stack, errors: list[str]) -> None:
        try:
            engine.start(["dockerd"])
        except procs.StartError as exc:
            errors.append(str(exc))

    def docker_host(self, n: int) -> str:
        return self.engines[n].env["RACK_DOCKER_HOST"]

    def stop(self) -> None:
        for engine in self.engines:
            engine.stop(["dockerd"])
            shutil.rmtree(engine.home, ignore_errors=True)
        for pid in self.relays:
            procs.kill(pid, timeout=5)
        if self.relay is not None:
            self.relay.close()
        self.network.destroy()


if __name__ == "__main__":  # python -m rack_stack.hosts relay PORT TARGET_HOST TARGET_PORT (in a namespace)
    import time

    if sys.argv[1:2] != ["relay"] or len(sys.argv) != 5:
        sys.exit("usage: python -m rack_stack.hosts relay PORT TARGET_HOST TARGET_PORT")
    Relay("127.0.0.1", int(sys.argv[4]), listen_port=int(sys.argv[2]), target_host=sys.argv[3])
    print("relaying", flush=True)
    while True:
        time.sleep(3600)

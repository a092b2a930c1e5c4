"""Network namespaces for build engines: a namespace joined to the host by a veth pair, and a forwarder.

A Docker engine started inside such a namespace (`nsenter --net=…`) gives its containers a bridge of
that namespace, NATed out through the veth pair. Nothing on the host answers through the veth: the
host drops every packet that arrives on its end (INPUT), so neither the engine nor its containers
reach the host's loopback, the rack's services or any host address. Traffic to elsewhere is
forwarded (egress). The engine itself reaches the registry through a forwarder that listens on the
namespace's own loopback (where containers on the bridge cannot connect) and connects on the host's.
"""

from __future__ import annotations

import ctypes
import hashlib
import ipaddress
import os
import socket
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

from rack_stack import procs

NETNS_DIR = Path("/var/run/netns")
CLONE_NEWNET = 0x40000000
# Veth pairs get a /30 of 10.201.0.0/16 and bridges a /24 of 10.202.0.0/16, at the same slot.
VETH_BASE = ipaddress.ip_network("10.201.0.0/16")
BRIDGE_BASE = ipaddress.ip_network("10.202.0.0/16")
SLOTS = 256
COMMENT = "rack_stack"


def _run(*argv: str, netns: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
    if netns is not None:
        argv = ("nsenter", f"--net={NETNS_DIR / netns}", *argv)
    result = subprocess.run(
        argv, capture_output=True, text=True, stdin=subprocess.DEVNULL, env=procs.base_env()
    )
    if check and result.returncode != 0:
        raise procs.StartError(f"{' '.join(argv)} failed: {result.stderr.strip()}")
    return result


@dataclass(frozen=True)
class Namespace:
    """One network namespace, its veth pair and the addresses at its slot."""

    name: str  # also the prefix of its veth names: at most 12 characters (interface names have 15)
    slot: int

    @classmethod
    def for_key(cls, key: str) -> Namespace:
        """Return the namespace named after `key` (a stack's home and engine index), at a free slot.

        The name is a digest of the key, so stacks in different folders never share one; the slot is
        the first one from the digest on whose addresses nothing on this machine sits yet.
        """
        digest = hashlib.sha1(key.encode()).hexdigest()
        name = f"rk{digest[:9]}"
        start = int(digest[9:13], 16) % SLOTS
        existing = cls(name, 0)
        if existing.exists():
            slot = existing.recorded_slot()
            if slot is not None:
                return cls(name, slot)
        used = _used_networks()
        for i in range(SLOTS):
            candidate = cls(name, (start + i) % SLOTS)
            if not any(candidate.veth_net.overlaps(n) or candidate.bridge_net.overlaps(n) for n in used):
                return candidate
        raise procs.StartError("no free address range left for another build network namespace")

    @property
    def path(self) -> Path:
        return NETNS_DIR / self.name

    @property
    def host_if(self) -> str:
        return f"{self.name}h"

    @property
    def ns_if(self) -> str:
        return f"{self.name}n"

    @property
    def veth_net(self) -> ipaddress.IPv4Network:
        return list(VETH_BASE.subnets(new_prefix=30))[self.slot]

    @property
    def bridge_net(self) -> ipaddress.IPv4Network:
        return list(BRIDGE_BASE.subnets(new_prefix=24))[self.slot]

    @property
    def host_ip(self) -> str:
        return str(self.veth_net.network_address + 1)

    @property
    def ns_ip(self) -> str:
        return str(self.veth_net.network_address + 2)

    @property
    def bridge_cidr(self) -> str:
        """Return the bridge's address for dockerd's `--bip` (gateway of the containers)."""
        return f"{self.bridge_net.network_address + 1}/24"

    def exists(self) -> bool:
        return self.path.exists()

    def recorded_slot(self) -> int | None:
        """Return the slot of the address on the host end of an existing pair, if any."""
        out = _run("ip", "-4", "-o", "addr", "show", "dev", self.host_if, check=False).stdout.split()
        if "inet" not in out:
            return None
        address = ipaddress.ip_interface(out[out.index("inet") + 1])
        if address.network.subnet_of(VETH_BASE):
            return list(VETH_BASE.subnets(new_prefix=30)).index(address.network)
        return None

    def create(self) -> None:
        """Create the namespace, its veth pair, routes and the host's rules; remove leftovers first."""
        self.delete()
        _run("ip", "netns", "add", self.name)
        try:
            _run("ip", "link", "add", self.host_if, "type", "veth", "peer", "name", self.ns_if)
            _run("ip", "link", "set", self.ns_if, "netns", self.name)
            _run("ip", "addr", "add", f"{self.host_ip}/30", "dev", self.host_if)
            _run("ip", "link", "set", self.host_if, "up")
            _run("ip", "link", "set", "lo", "up", netns=self.name)
            _run("ip", "addr", "add", f"{self.ns_ip}/30", "dev", self.ns_if, netns=self.name)
            _run("ip", "link", "set", self.ns_if, "up", netns=self.name)
            _run("ip", "route", "add", "default", "via", self.host_ip, netns=self.name)
            for rule in self._host_rules():
                _run("iptables", *rule[0], "-I" if rule[1] else "-A", *rule[2])
        except procs.StartError:
            self.delete()
            raise

    def delete(self) -> None:
        """Remove the host's rules, the veth pair and the namespace, whichever exist."""
        delete_rules(self.name)
        _run("ip", "link", "del", self.host_if, check=False)
        if self.exists():
            _run("ip", "netns", "del", self.name, check=False)

    def _host_rules(self) -> list[tuple[list[str], bool, list[str]]]:
        """Return the host's iptables rules for this pair: (table args, insert first?, rule)."""
        tag = ["-m", "comment", "--comment", f"{COMMENT} {self.name}"]
        return [
            # Nothing of the host answers the namespace: not the engine, not a build container.
            ([], True, ["INPUT", "-i", self.host_if, *tag, "-j", "DROP"]),
            # Egress, whatever the host's FORWARD policy.
            ([], True, ["FORWARD", "-i", self.host_if, *tag, "-j", "ACCEPT"]),
            ([], True, ["FORWARD", "-o", self.host_if, "-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED",
                        *tag, "-j", "ACCEPT"]),
            (["-t", "nat"], False, ["POSTROUTING", "-s", str(self.veth_net), "!", "-o", self.host_if,
                                    *tag, "-j", "MASQUERADE"]),
        ]  # fmt: skip


def delete_rules(name: str) -> None:
    """Remove the host's iptables rules made for the namespace `name` (found by their comment)."""
    import shlex

    for table in ("filter", "nat"):
        listing = _run("iptables", "-t", table, "-S", check=False).stdout.splitlines()
        for line in listing:
            words = shlex.split(line)
            if line.startswith("-A ") and f"{COMMENT} {name}" in words:
                _run("iptables", "-t", table, "-D", *words[1:], check=False)


def _used_networks() -> list[ipaddress.IPv4Network]:
    """Return the IPv4 networks on this machine's interfaces and routes (of the host's namespace)."""
    found = []
    for argv in (["ip", "-4", "-o", "addr"], ["ip", "-4", "route"]):
        for word in _run(*argv, check=False).stdout.split():
            try:
                net = ipaddress.ip_network(word, strict=False)
            except ValueError:
                continue
            if net.prefixlen > 0:
                found.append(net)
    return found


def all_namespaces() -> list[str]:
    """Return the names of the namespaces rack_stack made that exist now."""
    return sorted(p.name for p in NETNS_DIR.glob("rk*")) if NETNS_DIR.exists() else []


# The forwarder: `python -m rack_stack.netns NETNS_PATH PORT[,PORT…]`


def _setns(path: str | int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    fd = path if isinstance(path, int) else os.open(path, os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns({path})")
    finally:
        if not isinstance(path, int):
            os.close(fd)


def listen_inside(netns: Path, port: int, *, host: str = "127.0.0.1") -> socket.socket:
    """Return a socket listening on `host`:`port` of `netns`; the caller stays in its own namespace.

    A socket belongs to the namespace it was made in, whichever namespace its thread moves to later.
    """
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        _setns(str(netns))
        try:
            server = socket.socket()
            server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            server.bind((host, port))
            server.listen(64)
        finally:
            _setns(home)
    finally:
        os.close(home)
    return server


def _pipe(src: socket.socket, dst: socket.socket) -> None:
    try:
        while data := src.recv(1 << 16):
            dst.sendall(data)
    except OSError:
        pass
    finally:
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def _serve(server: socket.socket, port: int) -> None:
    while True:
        inner, _ = server.accept()
        try:
            outer = socket.create_connection(("127.0.0.1", port), timeout=10)
        except OSError:
            inner.close()
            continue
        outer.settimeout(None)
        for a, b in ((inner, outer), (outer, inner)):
            threading.Thread(target=_pipe, args=(a, b), daemon=True).start()


def forward(netns: Path, ports: list[int]) -> None:
    """Forward 127.0.0.1:PORT inside `netns` to 127.0.0.1:PORT of the host, for each port; never return."""
    servers = [(listen_inside(netns, port), port) for port in ports]
    print(f"forwarding {ports} from {netns}", flush=True)
    threads = [threading.Thread(target=_serve, args=pair, daemon=True) for pair in servers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


if __name__ == "__main__":
    forward(Path(sys.argv[1]), [int(p) for p in sys.argv[2].split(",")])

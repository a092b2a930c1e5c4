"""Private Docker engines (each with its own containerd) whose state lives under the stack's home.

Unless the stack's build network is `host`, each engine runs inside a network namespace of its own
(rack_stack.netns): its build containers get a bridge there, with egress through NAT, and no route to
the host's loopback or any service of the rack. The engine reaches the registry through a forwarder on
the namespace's loopback. `Dockerd(stack, index=N)` is the N-th engine of a stack (a host of its own,
for scale-out): engine 0 keeps its files in the stack's home, the others in `<home>/engine<N>/`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from rack_stack import procs
from rack_stack.netns import Namespace, delete_rules
from rack_stack.service import Service

if TYPE_CHECKING:
    from rack_stack.stack import Stack

CHECKOUT = Path(__file__).resolve().parents[1]
_SOCKET_PATH_MAX = 107
FORWARDER = "rack_stack.netns"  # its module, run with -m
CGROUP_ROOT = Path("/sys/fs/cgroup")
CGROUP_CONTROLLERS = ("memory", "cpu")  # those the worker sets limits in; the runtime makes the others


# On a network it does not own (the host's, or a namespace made for it): no bridge and no rules of ours, so
# engines can share that network.
NO_NETWORK_OF_ITS_OWN = ["--bridge", "none", "--iptables=false", "--ip-masq=false"]


class Dockerd(Service):
    """dockerd in a network namespace of its own (or, for `host` builds, on the host's with no bridge)."""

    name = "dockerd"
    proc_name = "dockerd"
    start_timeout = 60.0
    stop_timeout = 30.0

    def __init__(self, stack: Stack, index: int = 0, *, network: str | None = None) -> None:
        super().__init__(stack)
        self.index = index
        self.network = network or stack.build_network  # `host`: on the host's network, no namespace
        if index:
            self.home = stack.home / f"engine{index}"
            self.home.mkdir(exist_ok=True)

    @property
    def socket(self) -> Path:
        if not self.index:
            return self.stack.docker_socket
        socket = self.home / "docker.sock"
        return (
            socket
            if len(str(socket)) <= _SOCKET_PATH_MAX
            else self.stack.run_dir / f"docker{self.index}.sock"
        )

    @property
    def exec_root(self) -> Path:
        return self.stack.run_dir / (f"docker-exec{self.index}" if self.index else "docker-exec")

    @property
    def pidfile(self) -> Path:
        return self.home / "docker.pid"  # written by dockerd itself

    def _forwarder_pidfile(self, port: int) -> Path:
        return self.home / f"forward-{port}.pid"

    @property
    def address(self) -> str:
        return f"unix://{self.socket}"

    @property
    def isolated(self) -> bool:
        """Tell whether the engine runs in a namespace of its own (every build network but `host`)."""
        return self.network != "host"

    @property
    def cgroup(self) -> str:
        """Return the cgroup the engine runs its containers under (its `--cgroup-parent`, RACK_BUILD_CGROUP).

        The worker sets RACK_BUILD_MEMORY and RACK_BUILD_CPUS on it (rack/pipeline/engine/limits.py).
        """
        return "rack-" + hashlib.sha1(f"{self.stack.home}#{self.index}".encode()).hexdigest()[:12]

    def make_cgroup(self) -> None:
        """Make the engine's cgroup in the memory and cpu hierarchies, without limits until a build."""
        for controller in CGROUP_CONTROLLERS:
            folder = CGROUP_ROOT / controller
            if not folder.is_dir():
                raise procs.StartError(
                    f"{folder} is missing: the engine's build limits need cgroup v1 with the {controller} "
                    "controller mounted there"
                )
            (folder / self.cgroup).mkdir(exist_ok=True)

    def remove_cgroup(self) -> None:
        """Remove the engine's cgroup, and what the engine's runtime made below it, in every hierarchy."""
        for top in CGROUP_ROOT.glob(f"*/{self.cgroup}"):
            for folder in sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
                folder.rmdir()  # a cgroup's files vanish with it; one with processes in it refuses
            top.rmdir()

    def namespace(self) -> Namespace:
        """Return this engine's network namespace (named after the stack's home and the index)."""
        return Namespace.for_key(f"{self.stack.home}#{self.index}")

    def ready(self) -> bool:
        """Tell whether the engine answers a ping."""
        import docker

        try:
            client = docker.DockerClient(base_url=self.address, timeout=5)
        except docker.errors.DockerException:
            return False
        try:
            return bool(client.ping())
        except (docker.errors.DockerException, OSError):
            return False
        finally:
            client.close()

    def dockerd_argv(self) -> list:
        """Make the engine's folders and config; return dockerd's argv with its state all of its own."""
        config = self.home / "dockerd.json"
        # Our own (empty) config, so /etc/docker/daemon.json of the machine can't add hosts or bridges.
        config.write_text(json.dumps({}) + "\n")
        (self.home / "docker").mkdir(exist_ok=True)
        self.exec_root.mkdir(parents=True, exist_ok=True)
        self.make_cgroup()
        return [
            "dockerd",
            "--config-file", config,
            "--host", self.address,
            "--data-root", self.home / "docker",
            "--exec-root", self.exec_root,
            "--pidfile", self.pidfile,
            "--cgroup-parent", f"/{self.cgroup}",
        ]  # fmt: skip

    def launch(self) -> int:
        """Start dockerd with its data, exec root, socket and pidfile of its own."""
        argv = self.dockerd_argv()
        if not self.isolated:
            argv += NO_NETWORK_OF_ITS_OWN
            return procs.spawn(argv, log=self.log, cwd=self.home)
        ns = self.namespace()
        ns.create()
        self.forward(self.stack.ports["registry"], ns=ns)
        # The bridge and dockerd's iptables rules (NAT for the containers) live in the namespace only.
        argv = ["nsenter", f"--net={ns.path}", *argv, "--bip", ns.bridge_cidr]
        return procs.spawn(argv, log=self.log, cwd=self.home)

    def forward(self, port: int, *, ns: Namespace | None = None) -> None:
        """Let the engine (not its containers) reach 127.0.0.1:`port` of the host, as everyone names it.

        The stack's registry is forwarded from the start; call this for another one (a second rack's
        registry, or the shared registry of a scale-out stack). Nothing to do for a `host` engine.
        """
        if not self.isolated:
            return
        pidfile = self._forwarder_pidfile(port)
        if procs.alive(procs.read_pid(pidfile), FORWARDER):
            return
        ns = ns or self.namespace()
        log = self.home / "forward.log"
        offset = log.stat().st_size if log.exists() else 0
        argv = [sys.executable, "-m", FORWARDER, ns.path, str(port)]
        pid = procs.spawn(argv, log=log, pidfile=pidfile, cwd=CHECKOUT)

        def listening() -> bool:
            with open(log, "rb") as f:
                f.seek(offset)
                return f"forwarding [{port}]".encode() in f.read()

        if not procs.wait_for(lambda: listening() or not procs.alive(pid), timeout=10) or not listening():
            raise procs.StartError(f"the registry forwarder did not start:\n{procs.log_tail(log)}")

    def cleanup(self) -> None:
        """Stop the containerd and shims this engine started, if dockerd left them behind."""
        super().cleanup()  # dockerd refuses a pidfile whose pid lives, even if recycled by another process
        containerd = self.exec_root / "containerd"
        for pid in procs.pids_with(str(containerd / "containerd.sock")):
            procs.kill(pid, timeout=5)
        procs.kill(procs.read_pid(containerd / "containerd.pid"), timeout=10, name="containerd")
        # dockerd adopts a containerd by this pid if it still exists (dying, or not yet reaped), then
        # times out waiting for its socket: make it start a fresh one.
        (containerd / "containerd.pid").unlink(missing_ok=True)
        # dockerd leaves its netns/default bind mount (and, if killed, container mounts) behind,
        # which would pile up on every restart and make the folder impossible to delete.
        for mount in sorted(_mounts_under(self.exec_root, self.home / "docker"), reverse=True):
            subprocess.run(["umount", "--lazy", mount], capture_output=True)
        for pidfile in self.home.glob("forward-*.pid"):
            procs.kill(procs.read_pid(pidfile), timeout=5, name=FORWARDER)
            pidfile.unlink(missing_ok=True)
        ns = self.namespace()
        ns.delete()
        delete_rules(ns.name)  # of a namespace that went before its rules
        with contextlib.suppress(OSError):  # busy: a container outlived its engine; the next start reuses it
            self.remove_cgroup()


def _mounts_under(*folders: Path) -> list[str]:
    """Return the mount points at or below any of `folders`."""
    prefixes = [str(folder) for folder in folders]
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].encode().decode("unicode_escape")  # spaces come as \040
        if any(point == prefix or point.startswith(prefix + "/") for prefix in prefixes):
            found.append(point)
    return found

"""A private Docker engine (with its own containerd) whose state lives under the stack's home."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from rack_stack import procs
from rack_stack.service import Service


class Dockerd(Service):
    """dockerd without a bridge or iptables rules, so several engines can share one machine."""

    name = "dockerd"
    proc_name = "dockerd"
    start_timeout = 60.0
    stop_timeout = 30.0

    @property
    def socket(self) -> Path:
        return self.stack.docker_socket

    @property
    def exec_root(self) -> Path:
        return self.stack.run_dir / "docker-exec"

    @property
    def pidfile(self) -> Path:
        return self.home / "docker.pid"  # written by dockerd itself

    @property
    def address(self) -> str:
        return f"unix://{self.socket}"

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

    def launch(self) -> int:
        """Start dockerd with its data, exec root, socket and pidfile of its own."""
        config = self.home / "dockerd.json"
        # Our own (empty) config, so /etc/docker/daemon.json of the machine can't add hosts or bridges.
        config.write_text(json.dumps({}) + "\n")
        (self.home / "docker").mkdir(exist_ok=True)
        self.exec_root.mkdir(parents=True, exist_ok=True)
        argv = [
            "dockerd",
            "--config-file", config,
            "--host", self.address,
            "--data-root", self.home / "docker",
            "--exec-root", self.exec_root,
            "--pidfile", self.pidfile,
            "--bridge", "none",
            "--iptables=false",
            "--ip-masq=false",
        ]  # fmt: skip
        return procs.spawn(argv, log=self.log, cwd=self.home)

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


def _mounts_under(*folders: Path) -> list[str]:
    """Return the mount points at or below any of `folders`."""
    prefixes = [str(folder) for folder in folders]
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].encode().decode("unicode_escape")  # spaces come as \040
        if any(point == prefix or point.startswith(prefix + "/") for prefix in prefixes):
            found.append(point)
    return found

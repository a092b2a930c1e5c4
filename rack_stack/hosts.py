"""Several worker hosts on one machine: each one an engine in a network namespace of its own.

The workers themselves run on the machine's network (they reach Postgres, Redis and the object store on
loopback); each one's engine, and so every build step it runs, lives in a namespace of its own that sees
none of the machine's loopback services. Each engine is the stack's ordinary isolated engine
(`rack_stack.dockerd`, `rack_stack.netns`): its only way out to the rack is the forwarder to the shared
registry, on the registry's own loopback address, so image names are the same on every host and the
engine (and BuildKit) treat it as the local registry it is.
"""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

from rack_stack import procs
from rack_stack.stack import Stack


class Hosts:
    """`count` worker hosts, each an isolated engine that reaches the shared registry at `registry_port`.

    `registry` is the address every host (and so every worker's RACK_REGISTRY) uses for the registry.
    """

    # Build steps get the engine's bridge in its namespace, as on any rack: they reach neither the
    # machine's loopback nor the registry forwarder. Workers on these engines set RACK_BUILD_NETWORK to this.
    build_network = "isolated"

    def __init__(self, root: Path, *, count: int, registry_port: int) -> None:
        self.root = root
        self.count = count
        self.registry_port = registry_port
        self.engines: list[Stack] = []

    @property
    def registry(self) -> str:
        """Return the registry's address, the same on the machine and on every host."""
        return f"127.0.0.1:{self.registry_port}"

    def start(self) -> Hosts:
        try:
            for n in range(self.count):
                home = self.root / f"host{n}"
                home.mkdir(parents=True, exist_ok=True)
                home.chmod(0o755)
                ports = {"registry": self.registry_port}
                self.engines.append(Stack(home, ports, fast=True, build_network=self.build_network))
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

"""The whole local stack: its home folder, ports, password, environment, and its services."""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shlex
import shutil
import tempfile
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from rack_stack import procs
from rack_stack.app import Api, Worker
from rack_stack.dockerd import Dockerd
from rack_stack.postgres import Postgres
from rack_stack.redis import Redis
from rack_stack.registry import Registry
from rack_stack.service import Service

SERVICES = ("postgres", "redis", "dockerd", "registry")
# Credentials of the internal services, generated once into <home>/secrets/ (mode 0600).
SECRETS = ("postgres", "redis", "registry")
REGISTRY_USER = "rack"
BUILD_NETWORKS = ("isolated", "none", "host")  # as RACK_BUILD_NETWORK (rack/config.py)
APP_SERVICES = ("api", "worker")
PORT_KEYS = ("postgres", "redis", "registry", "api")
# The local rack's ports (deploy/local/up); stacks on free ports keep clear of them.
DEFAULT_PORTS = {"postgres": 15432, "redis": 16379, "registry": 15000, "api": 15443}
_CLASSES: dict[str, type[Service]] = {
    cls.name: cls for cls in (Postgres, Redis, Dockerd, Registry, Api, Worker)
}
# A unix socket path has at most 107 bytes. The longest under the run dir is dockerd's
# docker-exec/containerd/containerd.sock.ttrpc (45 with the slash); keep a few in reserve.
_SOCKET_PATH_MAX = 107
_RUN_DIR_MAX = _SOCKET_PATH_MAX - 45 - 8


class Stack:
    """Postgres, Redis, a Docker engine and a registry on loopback, plus the rack API and a worker."""

    def __init__(
        self,
        home: Path | str,
        ports: Mapping[str, int] | None = None,
        *,
        fast: bool = False,
        default_ports: Mapping[str, int] | None = None,
        build_network: str | None = None,
        registry_auth: bool = True,
    ) -> None:
        self.home = Path(home).absolute()
        self.fast = fast
        self.registry_auth = registry_auth  # False only for a stand-in of a public registry in tests
        self.build_network = build_network or os.environ.get("RACK_BUILD_NETWORK") or "isolated"
        if self.build_network not in BUILD_NETWORKS:
            raise ValueError(
                f"build network {self.build_network!r}: choose one of {', '.join(BUILD_NETWORKS)}"
            )
        self.home.mkdir(parents=True, exist_ok=True)
        self.services: dict[str, Service] = {name: cls(self) for name, cls in _CLASSES.items()}
        self.ports = self._load_ports(dict(ports or {}), dict(default_ports or {}))
        self.password = self._load_password()
        self.secrets = {name: self._load_secret(name) for name in SECRETS}

    @property
    def run_dir(self) -> Path:
        """Return a folder for unix sockets: the home itself, or a short one under /run if home is long."""
        if len(str(self.home)) <= _RUN_DIR_MAX:
            return self.home
        digest = hashlib.sha1(str(self.home).encode()).hexdigest()[:10]
        base = Path("/run") if os.access("/run", os.W_OK) else Path(tempfile.gettempdir())
        return base / f"rack-{digest}"

    @property
    def docker_socket(self) -> Path:
        socket = self.home / "docker.sock"
        return socket if len(str(socket)) <= _SOCKET_PATH_MAX else self.run_dir / "docker.sock"

    @property
    def env(self) -> dict[str, str]:
        """Return the RACK_* settings that point the API, the worker and the CLI at this stack."""
        return {
            "RACK_DATABASE_URL": (
                f"postgresql://rack:{self.secrets['postgres']}@127.0.0.1:{self.ports['postgres']}/rack"
            ),
            "RACK_REDIS_URL": f"redis://:{self.secrets['redis']}@127.0.0.1:{self.ports['redis']}/0",
            "RACK_STORAGE": f"file://{self.home / 'objects'}",
            "RACK_REGISTRY": f"127.0.0.1:{self.ports['registry']}",
            "RACK_REGISTRY_USERNAME": REGISTRY_USER,
            "RACK_REGISTRY_PASSWORD": self.secrets["registry"],
            "RACK_DOCKER_HOST": f"unix://{self.docker_socket}",
            "RACK_BUILD_CGROUP": self.services["dockerd"].cgroup,  # type: ignore[attr-defined]
            "RACK_PASSWORD": self.password,
            "RACK_NAME": "local",
            "RACK_BUILD_NETWORK": self.build_network,
            "RACK_API_URL": f"http://127.0.0.1:{self.ports['api']}",
        }

    def start(self, services: Iterable[str] = SERVICES) -> dict[str, bool]:
        """Start the named services that are not up yet; tell for each whether it was started."""
        names = self._names(services)
        taken = [reason for reason in (self.services[n].port_taken() for n in names) if reason]
        if taken:  # before starting anything, rather than leave half a stack running
            raise procs.StartError("\n".join(taken))
        (self.home / "objects").mkdir(exist_ok=True)
        self.run_dir.mkdir(mode=0o755, exist_ok=True)
        started: dict[str, bool] = {}
        infra = [n for n in names if n in SERVICES]
        with ThreadPoolExecutor(max_workers=len(infra) or 1) as pool:
            futures = {name: pool.submit(self.services[name].start) for name in infra}
        errors = []
        for name, future in futures.items():
            try:
                started[name] = future.result()
            except procs.StartError as exc:
                errors.append(str(exc))
        if errors:
            raise procs.StartError("\n\n".join(errors))
        for name in (n for n in names if n in APP_SERVICES):
            started[name] = self.services[name].start()
        return started

    def stop(self, services: Iterable[str] | None = None) -> dict[str, bool]:
        """Stop the named services (all by default), apps first; tell for each whether it was running."""
        names = self._names(services if services is not None else (*SERVICES, *APP_SERVICES))
        stopped = {name: self.services[name].stop() for name in reversed(APP_SERVICES) if name in names}
        infra = [n for n in names if n in SERVICES]
        with ThreadPoolExecutor(max_workers=len(infra) or 1) as pool:
            stopped.update(zip(infra, pool.map(lambda n: self.services[n].stop(), infra), strict=True))
        if self.run_dir != self.home and not any(svc.pid() for svc in self.services.values()):
            shutil.rmtree(self.run_dir, ignore_errors=True)
        return stopped

    def status(self) -> dict[str, dict]:
        """Return, for every service, its pid (or None), whether it answers, and its address."""
        return {
            name: {"pid": (pid := svc.pid()), "up": pid is not None and svc.ready(), "address": svc.address}
            for name, svc in self.services.items()
        }

    def docker(self):
        """Return a docker SDK client of this stack's engine."""
        import docker

        client = docker.DockerClient(base_url=f"unix://{self.docker_socket}", timeout=300)
        if self.services["registry"].pid() is not None and self.services["dockerd"].pid() is not None:
            env = self.env  # remembered by the client: its pulls from the registry carry the credentials
            client.login(
                env["RACK_REGISTRY_USERNAME"], env["RACK_REGISTRY_PASSWORD"], registry=env["RACK_REGISTRY"]
            )
        return client

    def seed_base_image(self) -> str:
        """Put `busybox:latest` in the engine and the registry (built from Debian's busybox-static)."""
        from rack_stack.base_image import seed

        return seed(self)

    def write_env_file(self) -> Path:
        """Write `<home>/rack.env`, a shell file of `export KEY='value'` lines, and return its path."""
        path = self.home / "rack.env"
        lines = "".join(f"export {key}={shlex.quote(value)}\n" for key, value in self.env.items())
        procs.write_private(path, lines)
        return path

    def _names(self, services: Iterable[str]) -> list[str]:
        names = [services] if isinstance(services, str) else list(services)
        unknown = sorted(set(names) - set(_CLASSES))
        if unknown:
            raise ValueError(f"unknown services {unknown}; known: {list(_CLASSES)}")
        return names

    def _load_ports(self, wanted: dict[str, int], defaults: dict[str, int]) -> dict[str, int]:
        """Take each port from `wanted`, else ports.json, else `defaults`, else a free one; save them."""
        path = self.home / "ports.json"
        unknown = sorted((set(wanted) | set(defaults)) - set(PORT_KEYS))
        if unknown:
            raise ValueError(f"unknown port keys {unknown}; known: {list(PORT_KEYS)}")
        saved = json.loads(path.read_text()) if path.exists() else {}
        ports = {key: int(wanted.get(key) or saved.get(key) or defaults.get(key) or 0) for key in PORT_KEYS}
        missing = [key for key, port in ports.items() if not port]
        fresh = procs.free_ports(len(missing), avoid=[*ports.values(), *DEFAULT_PORTS.values()])
        ports.update(zip(missing, fresh, strict=True))
        if ports != saved:
            running = [name for name, service in self.services.items() if service.pid() is not None]
            if saved and running:
                names = ", ".join(running)
                raise procs.StartError(
                    f"{names} in {self.home} run on ports {saved}: stop them to use {ports}"
                )
            path.write_text(json.dumps(ports, indent=2) + "\n")
        return ports

    def _load_password(self) -> str:
        path = self.home / "password"
        if not path.exists():
            procs.write_private(path, secrets.token_urlsafe(24) + "\n")
        return path.read_text().strip()

    def _load_secret(self, name: str) -> str:
        """Return the password of an internal service, generating it on first use.

        Remove the file and restart the stack to rotate it: each service is given its password on
        every start.
        """
        folder = self.home / "secrets"
        folder.mkdir(mode=0o700, exist_ok=True)
        path = folder / name
        if not path.exists():
            procs.write_private(path, secrets.token_urlsafe(24) + "\n")
        return path.read_text().strip()

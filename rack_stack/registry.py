"""The CNCF distribution registry from Debian's docker-registry, on loopback, without auth."""

from __future__ import annotations

import urllib.error
import urllib.request

from rack_stack import procs
from rack_stack.service import Service


class Registry(Service):
    """A private image registry storing its blobs in `<home>/registry`."""

    name = "registry"
    proc_name = "registry"

    @property
    def port(self) -> int:
        return self.stack.ports["registry"]

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def ready(self) -> bool:
        """Tell whether GET /v2/ answers 200."""
        try:
            with urllib.request.urlopen(f"http://{self.address}/v2/", timeout=2) as response:
                return response.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def launch(self) -> int:
        """Write registry.yml and start `docker-registry serve` with it."""
        storage = self.home / "registry"
        storage.mkdir(exist_ok=True)
        config = self.home / "registry.yml"
        config.write_text(
            "# Written by rack_stack on every start.\n"
            "version: 0.1\n"
            "log:\n  level: info\n  accesslog:\n    disabled: true\n"
            "storage:\n"
            f"  filesystem:\n    rootdirectory: '{storage}'\n"
            "  delete:\n    enabled: true\n"
            "  maintenance:\n    uploadpurging:\n      enabled: false\n"
            f"http:\n  addr: {self.address}\n"
        )
        return procs.spawn(
            ["docker-registry", "serve", config], log=self.log, pidfile=self.pidfile, cwd=storage
        )

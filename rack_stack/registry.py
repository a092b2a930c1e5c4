"""The CNCF distribution registry from Debian's docker-registry, on loopback, with htpasswd auth.

Only holders of the registry password (the workers, and the API for exports and imports) push, pull or
delete (the rack removes a failed build's tags and a deleted app's images).
"""

from __future__ import annotations

import base64
import urllib.error
import urllib.request

from rack_stack import procs
from rack_stack.service import Service

REALM = "rack"


def request(
    registry: str,
    path: str,
    *,
    username: str,
    password: str,
    method: str = "GET",
    headers: dict | None = None,
) -> urllib.request.Request:
    """Return a request to the registry's `/v2/…` API that carries HTTP Basic credentials."""
    token = base64.b64encode(f"{username}:{password}".encode()).decode()
    return urllib.request.Request(
        f"http://{registry}/v2/{path.lstrip('/')}",
        method=method,
        headers={**(headers or {}), "Authorization": f"Basic {token}"},
    )


def htpasswd_line(username: str, password: str) -> str:
    """Return an htpasswd line with a bcrypt hash of the password (the only kind the registry takes)."""
    import bcrypt

    # The registry checks the hash on every request (a push makes a dozen): at bcrypt's usual cost of 10
    # that is ~80 ms of CPU each, most of a push's time. The password is 24 random bytes, out of reach
    # of a guess at any cost, so the lowest cost the registry's own example uses is enough.
    hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=5)).decode()
    return f"{username}:{hashed}\n"


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
        """Tell whether GET /v2/ answers 200 to the stack's credentials."""
        env = self.stack.env
        req = request(
            self.address, "", username=env["RACK_REGISTRY_USERNAME"], password=env["RACK_REGISTRY_PASSWORD"]
        )
        try:
            with urllib.request.urlopen(req, timeout=2) as response:
                return response.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def launch(self) -> int:
        """Write htpasswd and registry.yml, then start `docker-registry serve` with them."""
        storage = self.home / "registry"
        storage.mkdir(exist_ok=True)
        htpasswd = self.home / "registry.htpasswd"
        env = self.stack.env
        procs.write_private(
            htpasswd, htpasswd_line(env["RACK_REGISTRY_USERNAME"], env["RACK_REGISTRY_PASSWORD"])
        )
        config = self.home / "registry.yml"
        config.write_text(
            "# Written by rack_stack on every start.\n"
            "version: 0.1\n"
            "log:\n  level: info\n  accesslog:\n    disabled: true\n"
            "storage:\n"
            f"  filesystem:\n    rootdirectory: '{storage}'\n"
            "  delete:\n    enabled: true\n"
            "  maintenance:\n    uploadpurging:\n      enabled: false\n"
            + (
                f"auth:\n  htpasswd:\n    realm: {REALM}\n    path: '{htpasswd}'\n"
                if self.stack.registry_auth
                else ""
            )
            + f"http:\n  addr: {self.address}\n"
        )
        return procs.spawn(
            ["docker-registry", "serve", config], log=self.log, pidfile=self.pidfile, cwd=storage
        )

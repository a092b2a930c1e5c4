"""Where the CLI finds its rack: `RACK_URL`, then `CONVOX_HOST`/`CONVOX_PASSWORD`, then `convox login`."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlparse

import click


def config_dir() -> Path:
    if os.environ.get("CONVOX_CONFIG"):
        return Path(os.environ["CONVOX_CONFIG"])
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "convox"


@dataclass(frozen=True)
class Endpoint:
    """The rack's base URL and the password to send with every request."""

    url: str
    password: str = field(repr=False)


def normalize_host(host: str) -> str:
    host = host.strip().rstrip("/")
    if not host.startswith(("http://", "https://")):
        # Loopback racks speak plain HTTP; anything else is expected behind TLS.
        local = host.split(":")[0] in ("localhost", "127.0.0.1", "[::1]")
        host = ("http://" if local else "https://") + host
    return host


def save_login(host: str, password: str) -> Path:
    """Remember a rack: `host` holds the current one, `auth` maps hosts to passwords (mode 600)."""
    folder = config_dir()
    folder.mkdir(parents=True, exist_ok=True)
    auth_file = folder / "auth"
    auth = json.loads(auth_file.read_text()) if auth_file.exists() else {}
    auth[host] = password
    # Created private: a password file must never be readable by others, not even for a moment.
    fd = os.open(auth_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(json.dumps(auth, indent=2) + "\n")
    auth_file.chmod(0o600)  # an older file may have been made with other modes
    (folder / "host").write_text(host + "\n")
    return folder


def current() -> Endpoint:
    """Find the rack to talk to, or explain how to set one."""
    if os.environ.get("RACK_URL"):
        u = urlparse(os.environ["RACK_URL"])
        base = f"{u.scheme}://{u.hostname}" + (f":{u.port}" if u.port else "")
        return Endpoint(base, unquote(u.password or ""))
    if os.environ.get("CONVOX_HOST"):
        return Endpoint(normalize_host(os.environ["CONVOX_HOST"]), os.environ.get("CONVOX_PASSWORD", ""))
    folder = config_dir()
    host_file = folder / "host"
    if host_file.exists():
        host = host_file.read_text().strip()
        auth_file = folder / "auth"
        auth = json.loads(auth_file.read_text()) if auth_file.exists() else {}
        return Endpoint(host, os.environ.get("CONVOX_PASSWORD") or auth.get(host, ""))
    raise click.ClickException("no rack set: run `convox login <host>` or set RACK_URL")

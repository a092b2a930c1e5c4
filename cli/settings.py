"""Where the CLI finds its rack, and the racks it remembers.

Order: `RACK_URL`; then a rack named by `-r/--rack` or `CONVOX_RACK`; then `CONVOX_HOST`/`CONVOX_PASSWORD`;
then the name in `./.convox/rack`; then the current rack (`convox switch`). Every rack logged in to is
remembered in the config folder: `racks` maps names to URLs, `auth` maps URLs to passwords, `current` holds
the current name. The files are created private (mode 600): they hold passwords.
"""

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


def _read_json(path: Path) -> dict:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def _write_private(path: Path, text: str) -> None:
    # Created private: a password file must never be readable by others, not even for a moment.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)
    path.chmod(0o600)  # an older file may have been made with other modes


def racks() -> dict[str, str]:
    """The racks logged in to, by name: their URLs."""
    return {str(k): str(v) for k, v in _read_json(config_dir() / "racks").items()}


def current_name() -> str | None:
    """The name of the current rack, if one was logged in to or switched to."""
    try:
        name = (config_dir() / "current").read_text().strip()
    except OSError:
        return None
    return name or None


def save_login(host: str, password: str, *, name: str | None = None) -> str:
    """Remember a rack under `name` (default: the host as given) and make it current; return the name."""
    name = name or host.strip().rstrip("/")
    url = normalize_host(host)
    folder = config_dir()
    folder.mkdir(parents=True, exist_ok=True)
    auth = _read_json(folder / "auth")
    auth[url] = password
    _write_private(folder / "auth", json.dumps(auth, indent=2) + "\n")
    known = racks()
    known[name] = url
    _write_private(folder / "racks", json.dumps(known, indent=2) + "\n")
    _write_private(folder / "current", name + "\n")
    return name


def switch(name: str) -> None:
    """Make a remembered rack the current one."""
    if name not in racks():
        raise click.ClickException(unknown(name))
    _write_private(config_dir() / "current", name + "\n")


def unknown(name: str) -> str:
    known = ", ".join(sorted(racks())) or "none yet"
    hint = f"log in with `convox login <host> --name {name}`"
    return f"no rack named {name!r} (racks logged in to: {known}); {hint}"


def _named(name: str) -> Endpoint:
    url = racks().get(name)
    if url is None:
        raise click.ClickException(unknown(name))
    password = _read_json(config_dir() / "auth").get(url, "")
    return Endpoint(url, os.environ.get("CONVOX_PASSWORD") or str(password))


def selected() -> str | None:
    """The rack named for this command: `-r/--rack`, then `CONVOX_RACK`."""
    ctx = click.get_current_context(silent=True)
    return (ctx.meta.get("rack") if ctx else None) or os.environ.get("CONVOX_RACK") or None


def current() -> Endpoint:
    """Find the rack to talk to, or explain how to set one."""
    if os.environ.get("RACK_URL"):
        u = urlparse(os.environ["RACK_URL"])
        base = f"{u.scheme}://{u.hostname}" + (f":{u.port}" if u.port else "")
        return Endpoint(base, unquote(u.password or ""))
    if name := selected():
        return _named(name)
    if os.environ.get("CONVOX_HOST"):
        return Endpoint(normalize_host(os.environ["CONVOX_HOST"]), os.environ.get("CONVOX_PASSWORD", ""))
    local = Path(".convox") / "rack"
    if local.is_file() and (name := local.read_text(encoding="utf-8").strip()):
        return _named(name)
    if name := current_name():
        return _named(name)
    legacy = config_dir() / "host"  # a login made before racks were remembered by name
    if legacy.exists():
        host = legacy.read_text().strip()
        password = _read_json(config_dir() / "auth").get(host, "")
        return Endpoint(host, os.environ.get("CONVOX_PASSWORD") or str(password))
    raise click.ClickException("no rack set: run `convox login <host>` or set RACK_URL")


def _remember_rack(ctx: click.Context, _param: click.Parameter, value: str | None) -> None:
    if value:
        ctx.meta["rack"] = value


def add_rack_option(command: click.Command) -> None:
    """Give `command` and every command under it `-r/--rack NAME` (once, though some sit in two groups)."""
    if any(p.name == "rack" for p in command.params):
        return
    command.params.append(
        click.Option(
            ["-r", "--rack"],
            metavar="NAME",
            expose_value=False,
            is_eager=True,
            callback=_remember_rack,
            help="the rack to use (a name given at `convox login`; default: the current rack)",
        )  # fmt: skip
    )
    for sub in getattr(command, "commands", {}).values():
        add_rack_option(sub)

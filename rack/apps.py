"""Apps: create, list, look up, delete."""

from __future__ import annotations

import re

from rack.context import Rack
from rack.errors import Conflict, Invalid, NotFound
from rack.sql import apps as sql

MAX_BUILD_TIMEOUT = 86400
NAME = re.compile(r"[a-z][a-z0-9-]{0,29}")


def check_name(name: str) -> str:
    """Refuse app names Convox would refuse: lowercase letters, digits and dashes, 30 at most."""
    if not NAME.fullmatch(name or ""):
        raise Invalid(
            f"app name {name!r} is invalid: use 1 to 30 lowercase letters, digits and dashes,"
            " starting with a letter"
        )
    return name


def serialize(row: dict) -> dict:
    """Shape an app row as Convox's App JSON."""
    return {
        "generation": row["generation"],
        "locked": False,
        "name": row["name"],
        "release": row["release"],
        "router": "",
        "status": "running",
        "parameters": {"BuildTimeout": str(row["build_timeout"])} if row["build_timeout"] else {},
    }


def parse_timeout(raw: str | None) -> int | None:
    """Read a build timeout in seconds (1 to 86400); empty means the rack's default."""
    if raw is None or raw == "":
        return None
    try:
        value = int(raw)
    except ValueError:
        raise Invalid(f"timeout must be a whole number of seconds, got {raw!r}") from None
    if not 1 <= value <= MAX_BUILD_TIMEOUT:
        raise Invalid(f"timeout must be between 1 and {MAX_BUILD_TIMEOUT} seconds, got {value}")
    return value


def create(rack: Rack, *, name: str, generation: str = "2", timeout: str | None = None) -> dict:
    check_name(name)
    build_timeout = parse_timeout(timeout)
    if generation not in ("2", ""):
        raise Invalid(f"generation {generation!r} is not supported: this rack runs generation 2 apps")
    with rack.db.transaction() as conn:
        row = sql.insert(conn, name=name, build_timeout=build_timeout)
    if row is None:
        raise Conflict(f"app already exists: {name}")
    return row


def get(rack: Rack, name: str, conn=None) -> dict:
    """Find an app by name or raise NotFound."""
    if not NAME.fullmatch(name or ""):
        raise NotFound(f"app not found: {name}")
    if conn is not None:
        row = sql.get(conn, name=name)
    else:
        with rack.db.transaction() as c:
            row = sql.get(c, name=name)
    if row is None:
        raise NotFound(f"app not found: {name}")
    return row


def update(rack: Rack, name: str, *, timeout: str | None = None) -> dict:
    """Change an app's settings: its build timeout (empty string: back to the rack's default)."""
    get(rack, name)
    with rack.db.transaction() as conn:
        if timeout is not None:
            sql.set_build_timeout(conn, name=name, build_timeout=parse_timeout(timeout))
        return get(rack, name, conn)


def list_all(rack: Rack) -> list[dict]:
    with rack.db.transaction() as conn:
        return sql.list_all(conn)


def delete(rack: Rack, name: str) -> None:
    """Delete the app with its builds, releases and objects."""
    get(rack, name)
    with rack.db.transaction() as conn:
        if not sql.delete(conn, name=name):
            raise NotFound(f"app not found: {name}")
    rack.store.delete_prefix(name)

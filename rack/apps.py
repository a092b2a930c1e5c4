"""Apps: create, list, look up, delete."""

from __future__ import annotations

import re
from urllib.parse import parse_qsl

from rack import registry
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
        "locked": bool(row.get("locked")),
        "name": row["name"],
        "release": row["release"],
        "router": "",
        "status": "running",
        "parameters": {"BuildTimeout": str(row["build_timeout"])} if row["build_timeout"] else {},
    }


# The app parameters that mean something on this rack; Convox's others (BuildCpu, BuildLabels, ...) do not.
PARAMETERS = ("BuildTimeout",)


def parse_parameters(raw: str | None) -> dict[str, str]:
    """Read Convox's `parameters` value (a map, form-encoded into one value: `BuildTimeout=600&...`)."""
    if raw is None or raw == "":
        return {}
    try:
        pairs = parse_qsl(raw, keep_blank_values=True, strict_parsing=True, max_num_fields=50)
    except ValueError:
        raise Invalid(f"parameters {raw[:200]!r} are not NAME=VALUE pairs joined with &") from None
    found = dict(pairs)
    unknown = sorted(set(found) - set(PARAMETERS))
    if unknown:
        raise Invalid(
            f"unknown app parameter{'s' if len(unknown) > 1 else ''}: {', '.join(unknown)}"
            f" (this rack knows: {', '.join(PARAMETERS)})"
        )
    return found


def check_unlocked(row: dict, action: str) -> None:
    """Refuse to change a locked app in a way its lock guards."""
    if row.get("locked"):
        name = row["name"]
        raise Conflict(f"app {name} is locked: can not {action} it; run `convox apps unlock {name}` first")


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


def update(
    rack: Rack,
    name: str,
    *,
    timeout: str | None = None,
    lock: bool | None = None,
    parameters: str | None = None,
    unknown: list[str] | None = None,
) -> dict:
    """Change an app's settings: lock it or unlock it, its build timeout (`timeout` or the `BuildTimeout`
    parameter; empty: back to the rack's default)."""
    get(rack, name)
    if unknown:  # never a 200 for a change this rack would not make
        raise Invalid(f"unknown option{'s' if len(unknown) > 1 else ''}: {', '.join(unknown)}")
    params = parse_parameters(parameters)
    if "BuildTimeout" in params:
        timeout = params["BuildTimeout"]
    build_timeout = parse_timeout(timeout) if timeout is not None else None
    with rack.db.transaction() as conn:
        if timeout is not None:
            sql.set_build_timeout(conn, name=name, build_timeout=build_timeout)
        if lock is not None:
            sql.set_locked(conn, name=name, locked=lock)
        return get(rack, name, conn)


def list_all(rack: Rack) -> list[dict]:
    with rack.db.transaction() as conn:
        return sql.list_all(conn)


def delete(rack: Rack, name: str) -> None:
    """Delete the app with its builds, releases and objects (not while it is locked)."""
    with rack.db.transaction() as conn:
        row = sql.get(conn, name=name, lock=True) if NAME.fullmatch(name or "") else None
        if row is None:
            raise NotFound(f"app not found: {name}")
        check_unlocked(row, "delete")
        if not sql.delete(conn, name=name):
            raise NotFound(f"app not found: {name}")
    rack.store.delete_prefix(name)
    registry.remove_app(rack.settings, name)  # the engines' copies go at their workers' next sweep

"""Releases: a build plus an environment, made active by promotion."""

from __future__ import annotations

from rack import apps, events
from rack.config import Settings
from rack.context import Rack
from rack.errors import Conflict, Invalid, NotFound, TooLarge
from rack.ids import check_id, new_id
from rack.sql import apps as apps_sql
from rack.sql import builds as builds_sql
from rack.sql import releases as sql
from rack.timefmt import rfc3339


def serialize(row: dict) -> dict:
    return {
        "id": row["id"],
        "app": row["app"],
        "build": row["build"],
        "env": row["env"],
        "manifest": row["manifest"],
        "description": row["description"],
        "created": rfc3339(row["created"]),
    }


def parse_env(text: str) -> dict[str, str]:
    """Read newline-separated `KEY=VALUE` lines into a dict."""
    env = {}
    for line in (text or "").splitlines():
        if not line.strip():
            continue
        key, sep, value = line.partition("=")
        if not sep or not key:
            raise Invalid(f"invalid environment line {line!r}: expected KEY=VALUE")
        env[key] = value
    return env


def check_env(env: dict[str, str], settings: Settings) -> None:
    """Refuse an environment with a value or a total past the rack's limits (each release copies it)."""
    for key, value in env.items():
        size, limit = len(value.encode("utf-8", "surrogatepass")), settings.env_max_value_bytes
        if size > limit:
            shown = key if len(key) <= 100 else key[:100] + "..."
            raise TooLarge(f"the value of {shown} is {size} bytes, larger than the limit of {limit}")
    total = len(format_env(env).encode("utf-8", "surrogatepass"))
    if total > settings.env_max_bytes:
        raise TooLarge(f"the environment is {total} bytes, larger than the limit of {settings.env_max_bytes}")


def format_env(env: dict[str, str]) -> str:
    return "\n".join(f"{k}={env[k]}" for k in sorted(env))


def env_diff(old: dict[str, str], new: dict[str, str]) -> str:
    """Describe an environment change as Convox does: `env add:A change:B remove:C`."""
    parts = [f"add:{k}" for k in sorted(new.keys() - old.keys())]
    parts += [f"change:{k}" for k in sorted(k for k in new.keys() & old.keys() if new[k] != old[k])]
    parts += [f"remove:{k}" for k in sorted(old.keys() - new.keys())]
    return "env " + " ".join(parts) if parts else "env"


def create_in(
    conn,
    *,
    app: str,
    build: str | None = None,
    env: str | None = None,
    description: str | None = None,
    parent: str | None = None,
) -> dict:
    """Fork the latest (or parent) release, then apply the build, env and description given."""
    base = sql.get(conn, app=app, id=parent) if parent else sql.latest(conn, app=app)
    if parent and base is None:
        raise NotFound(f"release not found: {parent}")
    base = base or {"build": "", "env": "", "manifest": "", "description": ""}
    fields = {"build": base["build"], "env": base["env"], "manifest": base["manifest"], "description": ""}
    if build:
        row = builds_sql.get(conn, app=app, id=build)
        if row is None:
            raise NotFound(f"build not found: {build}")
        fields.update(build=build, manifest=row["manifest"], description=row["description"])
    if env is not None:
        new_env = parse_env(env)
        fields["description"] = env_diff(parse_env(base["env"]), new_env)
        fields["env"] = format_env(new_env)
    if description:
        fields["description"] = description
    return sql.insert(conn, id=new_id("R"), app=app, **fields)


def create(rack: Rack, app: str, *, build: str | None = None, **kw) -> dict:
    """Create a release on request; a build must be complete to be released."""
    with rack.db.transaction() as conn:
        apps.get(rack, app, conn)
        if build:
            row = builds_sql.get(conn, app=app, id=build)
            if row is None:
                raise NotFound(f"build not found: {build}")
            if row["status"] != "complete":
                raise Conflict(f"build {build} is {row['status']}: only a complete build can be released")
        if kw.get("env") is not None:
            check_env(parse_env(kw["env"]), rack.settings)
        release = create_in(conn, app=app, build=build, **kw)
    created(rack, release)
    return release


def created(rack: Rack, release: dict) -> None:
    """Tell the event hooks of a new release."""
    events.emit(
        rack, "release:create", app=release["app"], data={"id": release["id"], "build_id": release["build"]}
    )


def get(rack: Rack, app: str, release_id: str) -> dict:
    check_id("release", release_id)
    with rack.db.transaction() as conn:
        apps.get(rack, app, conn)
        row = sql.get(conn, app=app, id=release_id)
    if row is None:
        raise NotFound(f"release not found: {release_id}")
    return row


def list_for_app(rack: Rack, app: str, *, limit: int = 10) -> list[dict]:
    with rack.db.transaction() as conn:
        apps.get(rack, app, conn)
        return sql.list_for_app(conn, app=app, limit=limit)


def latest_env(conn, app: str) -> dict[str, str]:
    row = sql.latest(conn, app=app)
    return parse_env(row["env"]) if row else {}


def set_env(
    rack: Rack,
    app: str,
    *,
    set_vars: dict[str, str] | None = None,
    unset: list[str] | None = None,
    replace: bool = False,
) -> dict:
    """Create a release whose environment is the latest one changed as asked."""
    with rack.db.transaction() as conn:
        apps.get(rack, app, conn)
        env = {} if replace else latest_env(conn, app)
        for key in unset or []:
            env.pop(key, None)
        env.update(set_vars or {})
        check_env(env, rack.settings)
        release = create_in(conn, app=app, env=format_env(env))
    created(rack, release)
    return release


def promote(rack: Rack, app: str, release_id: str, *, rollback: bool = False) -> dict:
    """Make a release the app's active one; older ones only as a rollback."""
    check_id("release", release_id)
    with rack.db.transaction() as conn:
        row = apps_sql.get(conn, name=app, lock=True)
        if row is None:
            raise NotFound(f"app not found: {app}")
        apps.check_unlocked(row, "promote a release of")
        release = sql.get(conn, app=app, id=release_id)
        if release is None:
            raise NotFound(f"release not found: {release_id}")
        if not release["manifest"].strip():
            raise Invalid("can not promote a release with an empty manifest")
        active = sql.get(conn, app=app, id=row["release"]) if row["release"] else None
        if active and release["created"] < active["created"] and not rollback:
            raise Invalid("can not promote an older release, try rollback")
        apps_sql.set_release(conn, name=app, release=release_id)
    events.emit(rack, "release:promote", app=app, data={"id": release_id})
    return release


def rollback(rack: Rack, app: str, release_id: str) -> dict:
    """Create a new release with an old one's build and env, then promote it."""
    apps.check_unlocked(apps.get(rack, app), "roll back")
    old = get(rack, app, release_id)
    with rack.db.transaction() as conn:
        new = create_in(
            conn,
            app=app,
            build=old["build"] or None,
            env=old["env"],
            description=f"rollback to {release_id}",
            parent=release_id,
        )
    created(rack, new)
    return promote(rack, app, new["id"])

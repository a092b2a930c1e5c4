"""An app's objects: uploads such as build sources, addressed as `object://<app>/<key>`."""

from __future__ import annotations

import io
import posixpath
import secrets
from typing import BinaryIO
from urllib.parse import urlparse

from rack import apps, metrics
from rack.context import Rack
from rack.errors import Forbidden, Invalid, NotFound
from rack.storage import key_size_problem, shown

MAX_KEY_BYTES = 1024  # S3's limit for a whole key
RESERVED = ".sources"  # an app's source contents live under <app>/.sources/ in the store


def normalize_key(key: str) -> str:
    """Clean a key as Convox does (`path.Clean`, leading `/` dropped); refuse `..`; empty → tmp key.

    Keys are at most MAX_KEY_BYTES of UTF-8 (S3's limit), each part at most MAX_PART_BYTES (a file name's).
    """
    if any(part == ".." for part in (key or "").split("/")):
        raise Invalid(f"invalid object key {shown(key or '')}: '..' is not allowed")
    if "\x00" in (key or ""):
        raise Invalid("invalid object key: NUL byte")
    cleaned = posixpath.normpath("/" + (key or "")).lstrip("/")
    if cleaned in ("", "."):
        return f"tmp/{secrets.token_hex(15)}"
    try:
        cleaned.encode()
    except UnicodeEncodeError:
        raise Invalid(f"invalid object key {shown(cleaned)}: not valid UTF-8") from None
    if problem := key_size_problem(cleaned, max_bytes=MAX_KEY_BYTES):
        raise Invalid(f"invalid object key {shown(cleaned)}: {problem}")
    return cleaned


def url(app: str, key: str) -> str:
    return f"object://{app}/{key}"


def parse_url(value: str) -> tuple[str, str]:
    """Split `object://app/key` into its app and normalised key."""
    u = urlparse(value)
    if u.scheme != "object" or not u.netloc:
        raise Invalid(f"not an object URL: {value!r} (expected object://<app>/<key>)")
    return u.netloc, normalize_key(u.path)


def _store_key(app: str, key: str) -> str:
    return f"{app}/{key}"


RACK_PREFIX = "build/"  # build logs (build/<ID>/logs): the rack writes them, clients read them


def outside_log_build(rack: Rack, app: str, key: str) -> dict | None:
    """The build whose log `key` is, when an outside builder may still store it; else None.

    Convox's `--external` builder stores its own log as `build/<ID>/logs` and reports that URL: only for
    an outside build of this app (`external=true`) that has not ended.
    """
    parts = key.split("/")
    if len(parts) != 3 or parts[0] + "/" != RACK_PREFIX or parts[2] != "logs":
        return None
    from rack.sql import builds as builds_sql  # the build rows sit above the objects they point at

    with rack.db.transaction() as conn:
        row = builds_sql.get(conn, app=app, id=parts[1])
    if row is None or not row["repository"] or row["process"] not in ("", "external"):
        return None
    return row if row["status"] in ("created", "running") else None


def _writable(rack: Rack, app: str, key: str) -> str:
    """Refuse the keys where the rack keeps an app's source contents (see rack.sources) and build logs."""
    if key == RESERVED or key.startswith(RESERVED + "/"):
        raise Invalid(f"object keys under {RESERVED}/ are reserved for the rack's source contents")
    if key == RACK_PREFIX.rstrip("/") or key.startswith(RACK_PREFIX):
        if outside_log_build(rack, app, key) is None:
            raise Forbidden(
                f"object key {shown(key)} is the rack's: keys under {RACK_PREFIX} hold build logs, which "
                "only the rack writes (and an --external build's own builder, before the build ends); "
                "upload under another key (e.g. tmp/)"
            )
    return key


def put(rack: Rack, app: str, key: str, body: BinaryIO) -> str:
    """Stream a client's upload into the store within the size limit; return its object URL."""
    apps.get(rack, app)
    key = _writable(rack, app, normalize_key(key))
    size = rack.store.put_stream(_store_key(app, key), body, limit=rack.settings.max_upload_bytes)
    metrics.add_upload_bytes(rack, size)
    return url(app, key)


def put_bytes_stream(rack: Rack, app: str, key: str, body: BinaryIO) -> str:
    """Store rack-made content (logs, exports) with no upload limit."""
    key = normalize_key(key)
    rack.store.put_stream(_store_key(app, key), body)
    return url(app, key)


def build_log_key(build_id: str) -> str:
    """Where a finished build's whole log is stored, as one of its app's objects."""
    return f"build/{build_id}/logs"


def store_build_log(rack: Rack, app: str, build_id: str, text: bytes | BinaryIO) -> str:
    """Store a build's whole log (bytes, or a file read to its end); return its object URL (`logs`)."""
    body = io.BytesIO(text) if isinstance(text, bytes) else text
    return put_bytes_stream(rack, app, build_log_key(build_id), body)


def open_object(rack: Rack, app: str, key: str) -> BinaryIO:
    apps.get(rack, app)
    key = normalize_key(key)
    try:
        return rack.store.open(_store_key(app, key))
    except FileNotFoundError:
        raise NotFound(f"object not found: {key}") from None


def list_keys(rack: Rack, app: str, *, prefix: str = "", limit: int = 1000) -> list[str]:
    """The app's object keys that start with `prefix` (Convox's ObjectList), sorted, at most `limit`."""
    apps.get(rack, app)
    if prefix.startswith("/") or ".." in prefix.split("/") or "\x00" in prefix:
        raise Invalid(f"prefix {prefix[:100]!r} is not a relative key prefix")
    found = rack.store.list_keys(app, starting=prefix, limit=limit + 1)
    if len(found) > limit:
        raise Invalid(f"more than {limit} objects start with {prefix!r}: name a longer prefix")
    return [key.removeprefix(f"{app}/") for key in found]


def exists(rack: Rack, app: str, key: str) -> bool:
    apps.get(rack, app)
    return rack.store.exists(_store_key(app, normalize_key(key)))


def delete(rack: Rack, app: str, key: str) -> None:
    apps.get(rack, app)
    key = _writable(rack, app, normalize_key(key))
    if not rack.store.exists(_store_key(app, key)):
        raise NotFound(f"object not found: {key}")
    rack.store.delete(_store_key(app, key))

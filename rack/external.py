"""Builds made outside the rack's workers, as Convox's CLI drives them.

- `convox build --external`: `POST builds external=true` answers with `repository` (the app's repository in
  the rack's registry, with push credentials, in that answer only); the CLI builds and pushes
  `<repository>:<service>.<BUILD ID>` with its own Docker engine, then reports with `PUT builds/{id}`.
- `convox builds import-image SRC`: `POST builds/{id}/image` copies SRC (or a service's own `image:`) into
  the rack's registry for every service of the build's manifest, on a worker, with skopeo; the build ends
  `complete` (images recorded) or `failed` with a reason.
"""

from __future__ import annotations

import hashlib
import re
import threading
from collections.abc import Iterator, Mapping
from urllib.parse import quote

from rack import apps, events, objects, skopeo
from rack.builds import record
from rack.context import Rack
from rack.errors import Conflict, Invalid, NotFound, RackError, Unprocessable
from rack.ids import new_id
from rack.logs.stream import BuildLog
from rack.pipeline import manifest as manifests
from rack.reasons import Reason
from rack.sql import builds as sql

PROCESS = "import-image"
_REFERENCE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/@+-]{0,511}")
_BAD = ("//", "@-", ":-", "/-", "..")


def repository(rack: Rack, app: str, *, with_credentials: bool = False) -> str:
    """The app's repository in the rack's registry as Convox's CLI parses it: `scheme://[user:pw@]host/app`."""
    s = rack.settings
    scheme = "http" if skopeo.insecure(s.registry) else "https"
    userinfo = ""
    if with_credentials and s.registry_username:
        userinfo = f"{quote(s.registry_username, safe='')}:{quote(s.registry_password, safe='')}@"
    return f"{scheme}://{userinfo}{s.registry}/{app}"


def create(rack: Rack, app: str, *, description: str = "", manifest: str = "", git_sha: str = "") -> dict:
    """Record a build the client makes itself: `created`, not queued, with the repository to push to."""
    apps.get(rack, app)
    options = {"manifest": manifest or "convox.yml", "external": True}
    with rack.db.transaction() as conn:
        row = sql.insert(
            conn, id=new_id("B"), app=app, source_url="", options=options, description=description,
            git_sha=git_sha,
        )  # fmt: skip
        row = sql.update(conn, id=row["id"], fields={"repository": repository(rack, app)}) or row
    events.emit(rack, "build:create", app=app, data={"id": row["id"]})
    return row


def check_reference(image: str) -> str:
    image = (image or "").strip()
    if not image:
        raise Unprocessable("image param required")
    if not _REFERENCE.fullmatch(image) or any(bad in image for bad in _BAD):
        raise Invalid(
            f"image {image[:200]!r} is not an image reference like registry.example.com/org/app:tag"
        )
    return image


class _AnyEnv(Mapping[str, str]):
    """Every variable set (to nothing): an import needs the manifest's services, not its environment."""

    def __getitem__(self, key: str) -> str:
        return ""

    def __contains__(self, key: object) -> bool:
        return True

    def __iter__(self) -> Iterator[str]:
        return iter(())

    def __len__(self) -> int:
        return 0


def sources(row: dict, image: str) -> dict[str, str]:
    """Each service of the build's manifest and the image it is copied from (its own `image:`, else SRC)."""
    if not row["manifest"].strip():
        raise Unprocessable(f"build {row['id']} has no manifest: PUT it first (convox.yml's text)")
    try:
        parsed = manifests.load(row["manifest"], _AnyEnv())
    except RackError as exc:
        raise Unprocessable(f"the build's manifest: {exc.message}") from None
    return {s.name: (s.image or image) for s in parsed.services}


def start_import(
    rack: Rack, app: str, build_id: str, *, image: str, user: str = "", password: str = ""
) -> dict:
    """Check and claim a `created` build for an image import, then queue the copy; return the build."""
    image = check_reference(image)
    row = record.get(rack, app, build_id)
    if row["status"] != "created":
        raise Conflict(f"build {build_id} is {row['status']}: only a created build can import an image")
    sources(row, image)  # a manifest that names no services is refused now, not on the worker
    with rack.db.transaction() as conn:
        claimed = sql.mark_running(conn, id=build_id, process=PROCESS)
    if claimed is None:
        raise Conflict(f"build {build_id} is already running")
    try:
        rack.enqueue_import(build_id, image, user, password)
    except Exception as exc:
        _end(rack, claimed, [], failed=Reason.QUEUE(f"the import could not be queued ({type(exc).__name__})"))
        raise
    return claimed


def run_import(rack: Rack, build_id: str, image: str, user: str, password: str) -> dict | None:
    """Copy the images of a claimed import (on a worker), heartbeating; end the build either way."""
    with rack.db.transaction() as conn:
        row = sql.get_by_id(conn, id=build_id)
    if row is None or row["status"] != "running" or row["process"] != PROCESS:
        return None
    log: list[str] = []
    stop = threading.Event()
    beat = threading.Thread(target=_heartbeat, args=(rack, build_id, stop), daemon=True)
    beat.start()
    images: dict[str, dict] = {}
    try:
        creds = {skopeo.host_of(src): (user, password) for src in set(sources(row, image).values()) if user}
        s = rack.settings
        if s.registry_username:
            creds[s.registry] = (s.registry_username, s.registry_password)
        for service, src in sorted(sources(row, image).items()):
            tag = f"{s.registry}/{row['app']}:{service}.{build_id}"
            log.append(f"Running: skopeo copy docker://{src} docker://{tag}\n")
            digest = skopeo.copy(f"docker://{src}", f"docker://{tag}", creds=creds, what=f"importing {src}")
            images[service] = {"image": tag, "digest": digest}
    except RackError as exc:
        log.append(f"ERROR: {exc.message}\n")
        return _end(rack, row, log, failed=Reason.IMAGE(exc.message))
    finally:
        stop.set()
        beat.join(5)
    log.append(f"Imported {len(images)} image(s) as build {build_id}\n")
    return _end(rack, row, log, images=images)


def _heartbeat(rack: Rack, build_id: str, stop: threading.Event) -> None:
    while not stop.wait(rack.settings.heartbeat_interval):
        try:
            with rack.db.transaction() as conn:
                sql.heartbeat(conn, id=build_id, process=PROCESS)
        except Exception:  # a missed beat is retried at the next; the reaper allows several
            continue


def _end(
    rack: Rack, row: dict, log: list[str], *, failed: str = "", images: dict | None = None
) -> dict | None:
    """Store the import's log and end the build as complete (with its images) or failed (with the reason)."""
    build_id = row["id"]
    try:
        logs = objects.store_build_log(rack, row["app"], build_id, "".join(log).encode())
    except Exception:
        logs = ""
    fields = {"logs": logs, "images": images or {}}
    with rack.db.transaction() as conn:
        done = sql.finish(
            conn, id=build_id, status="failed" if failed else "complete", reason=failed, fields=fields,
            process=PROCESS,
        )  # fmt: skip
    if done is None:
        raise NotFound(f"build {build_id} was ended elsewhere during its import")
    BuildLog(rack.redis, build_id).end(done["status"], ttl=rack.settings.log_stream_ttl)
    events.build_ended(rack, done)
    return done


def pushed(rack: Rack, row: dict) -> dict[str, dict]:
    """The images an external build pushed, one per service of its manifest, with their digests."""
    images = {}
    s = rack.settings
    creds = {s.registry: (s.registry_username, s.registry_password)} if s.registry_username else {}
    for service in sorted(sources(row, "")):
        tag = f"{s.registry}/{row['app']}:{service}.{row['id']}"
        try:
            raw = skopeo.inspect_raw(f"docker://{tag}", creds=creds, what=f"finding {tag}")
        except RackError:
            raise Conflict(
                f"build {row['id']} can not be complete: service {service} has no image at {tag}"
            ) from None
        images[service] = {"image": tag, "digest": "sha256:" + hashlib.sha256(raw).hexdigest()}
    return images

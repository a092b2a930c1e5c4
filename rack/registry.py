"""The rack's registry over its HTTP API (distribution v2): list an app's tags, remove tags a build left,
upload a blob streamed from an iterable, read a manifest or a small blob, and put a manifest.

The registry deletes manifests by digest, and a digest may stand behind several tags (an unchanged
service built twice gives the same image): a tag is removed by deleting its digest and putting the same
manifest back under the tags that stay (its blobs are untouched, so that costs no upload). Errors become
`BadGateway`; removal is best-effort for callers that must not fail on it.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable
from urllib.parse import urljoin

import requests

from rack.config import Settings
from rack.errors import BadGateway

log = logging.getLogger(__name__)
ACCEPT = ", ".join(
    [
        "application/vnd.docker.distribution.manifest.v2+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.oci.image.index.v1+json",
    ]
)
TIMEOUT = 30


class Registry:
    """One registry session, from the rack's settings."""

    def __init__(self, settings: Settings) -> None:
        self.base = f"http://{settings.registry}/v2"
        self.session = requests.Session()
        if settings.registry_username:
            self.session.auth = (settings.registry_username, settings.registry_password)

    def __enter__(self) -> Registry:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.session.close()

    def _call(self, method: str, path: str, **kw) -> requests.Response:
        return self._at(method, f"{self.base}/{path}", **kw)

    def _at(self, method: str, url: str, **kw) -> requests.Response:
        try:
            return self.session.request(method, url, timeout=TIMEOUT, **kw)
        except requests.RequestException as exc:
            raise BadGateway(f"the registry is unreachable: {exc}") from exc

    def upload(self, repository: str, chunks: Iterable[bytes]) -> tuple[str, int]:
        """Upload one blob as `chunks` come (one streamed request, nothing held); return its digest and
        size. Whatever `chunks` raises stops the upload, which is then cancelled."""
        r = self._call("POST", f"{repository}/blobs/uploads/")
        if r.status_code != 202 or "Location" not in r.headers:
            raise BadGateway(f"starting an upload to {repository}: HTTP {r.status_code}")
        location = urljoin(self.base, r.headers["Location"])
        hashed, size = hashlib.sha256(), 0

        def body() -> Iterable[bytes]:
            nonlocal size
            for chunk in chunks:
                hashed.update(chunk)
                size += len(chunk)
                yield chunk

        try:
            r = self._at("PATCH", location, data=body(), headers={"Content-Type": "application/octet-stream"})
            if r.status_code != 202 or "Location" not in r.headers:
                raise BadGateway(f"uploading to {repository}: HTTP {r.status_code} {r.text[:200]}")
            digest = f"sha256:{hashed.hexdigest()}"
            r = self._at("PUT", urljoin(self.base, r.headers["Location"]), params={"digest": digest})
            if r.status_code != 201:
                raise BadGateway(f"completing an upload to {repository}: HTTP {r.status_code} {r.text[:200]}")
        except BaseException:
            try:
                self.session.delete(location, timeout=TIMEOUT)
            except requests.RequestException:
                log.warning("an upload to %s could not be cancelled", repository, exc_info=True)
            raise
        return digest, size

    def put_manifest(self, repository: str, tag: str, body: bytes, media_type: str) -> str:
        """Put a manifest under a tag; return its digest."""
        r = self._call(
            "PUT", f"{repository}/manifests/{tag}", data=body, headers={"Content-Type": media_type}
        )
        if r.status_code != 201:
            raise BadGateway(f"putting the manifest {repository}:{tag}: HTTP {r.status_code} {r.text[:200]}")
        return r.headers.get("Docker-Content-Digest") or f"sha256:{hashlib.sha256(body).hexdigest()}"

    def manifest(self, repository: str, reference: str, *, max_bytes: int = 4 << 20) -> dict | None:
        """The manifest under a tag or digest, as JSON (None when the registry has none)."""
        body = self._read(f"{repository}/manifests/{reference}", max_bytes, headers={"Accept": ACCEPT})
        if body is None:
            return None
        try:
            found = json.loads(body)
        except ValueError:
            raise BadGateway(f"the manifest {repository}:{reference} is not JSON") from None
        return found if isinstance(found, dict) else None

    def blob(self, repository: str, digest: str, *, max_bytes: int) -> bytes | None:
        """A small blob's bytes (None when the repository has none; BadGateway past max_bytes)."""
        return self._read(f"{repository}/blobs/{digest}", max_bytes)

    def _read(self, path: str, max_bytes: int, **kw) -> bytes | None:
        r = self._call("GET", path, stream=True, **kw)
        with r:
            if r.status_code == 404:
                return None
            if r.status_code != 200:
                raise BadGateway(f"reading {path}: HTTP {r.status_code}")
            body = r.raw.read(max_bytes + 1, decode_content=True)
        if len(body) > max_bytes:
            raise BadGateway(f"{path} is larger than {max_bytes} bytes")
        return body

    def tags(self, repository: str) -> list[str]:
        """Return the repository's tags ([] when it has none or does not exist)."""
        tags: list[str] = []
        path = f"{repository}/tags/list?n=1000"
        while path:
            r = self._call("GET", path)
            if r.status_code == 404:
                return tags
            if r.status_code != 200:
                raise BadGateway(f"listing the tags of {repository}: HTTP {r.status_code}")
            tags += r.json().get("tags") or []
            link = r.headers.get("Link", "")
            path = link.split(";")[0].strip("<> ").removeprefix("/v2/") if 'rel="next"' in link else ""
        return tags

    def digest(self, repository: str, tag: str) -> str | None:
        r = self._call("HEAD", f"{repository}/manifests/{tag}", headers={"Accept": ACCEPT})
        if r.status_code == 404:
            return None
        if r.status_code != 200:
            raise BadGateway(f"looking up {repository}:{tag}: HTTP {r.status_code}")
        return r.headers.get("Docker-Content-Digest")

    def remove_tags(self, repository: str, remove: set[str]) -> list[str]:
        """Remove these tags of the repository, keeping every other; return the tags removed."""
        by_digest: dict[str, list[str]] = {}
        for tag in self.tags(repository):
            if (digest := self.digest(repository, tag)) is not None:
                by_digest.setdefault(digest, []).append(tag)
        removed = []
        for digest, tags in by_digest.items():
            doomed = [tag for tag in tags if tag in remove]
            if not doomed:
                continue
            kept = [tag for tag in tags if tag not in remove]
            # the registry deletes a manifest with every tag on it: put it back under the tags that stay
            body = (
                self._call("GET", f"{repository}/manifests/{digest}", headers={"Accept": ACCEPT})
                if kept
                else None
            )
            r = self._call("DELETE", f"{repository}/manifests/{digest}")
            if r.status_code not in (200, 202, 404):
                raise BadGateway(f"deleting {repository}@{digest}: HTTP {r.status_code}")
            for tag in kept:
                assert body is not None
                put = self._call(
                    "PUT",
                    f"{repository}/manifests/{tag}",
                    data=body.content,
                    headers={"Content-Type": body.headers.get("Content-Type", ACCEPT.split(",")[0])},
                )
                if put.status_code not in (200, 201):
                    raise BadGateway(f"restoring {repository}:{tag}: HTTP {put.status_code}")
            removed += doomed
        return removed

    def remove_repository(self, repository: str) -> list[str]:
        """Remove every tag of the repository; return them."""
        return self.remove_tags(repository, set(self.tags(repository)))


def remove_build_tags(settings: Settings, app: str, build_id: str) -> list[str]:
    """Remove the tags one build pushed (`<service>.<build id>`); never raise (logged instead)."""
    try:
        with Registry(settings) as registry:
            mine = {tag for tag in registry.tags(app) if tag.endswith(f".{build_id}")}
            return registry.remove_tags(app, mine) if mine else []
    except Exception:
        log.warning("the tags of build %s could not be removed from the registry", build_id, exc_info=True)
        return []


def remove_app(settings: Settings, app: str) -> list[str]:
    """Remove every image of an app from the registry; never raise (logged instead)."""
    try:
        with Registry(settings) as registry:
            return registry.remove_repository(app)
    except Exception:
        log.warning("the images of app %s could not be removed from the registry", app, exc_info=True)
        return []

"""A tiny `busybox:latest` base image made from Debian's busybox-static, for engines with no way out."""

from __future__ import annotations

import io
import json
import subprocess
import tarfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING

from rack_stack import procs
from rack_stack.registry import request as registry_request

if TYPE_CHECKING:
    from rack_stack.stack import Stack

BUSYBOX = Path("/bin/busybox")
NAME = "busybox"
TAG = "latest"
CHANGES = ["ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", 'CMD ["sh"]']
PASSWD = "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
GROUP = "root:x:0:\nnogroup:x:65534:\n"
FOLDERS = [("bin", 0o755), ("sbin", 0o755), ("usr", 0o755), ("usr/bin", 0o755), ("usr/sbin", 0o755)]
FOLDERS += [("etc", 0o755), ("root", 0o700), ("tmp", 0o1777)]
MANIFEST_TYPES = ", ".join(
    [
        "application/vnd.docker.distribution.manifest.v2+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.oci.image.index.v1+json",
    ]
)


def rootfs_tar(busybox: Path = BUSYBOX) -> bytes:
    """Return a tar of a root filesystem: busybox, a link per applet, /tmp, /root and /etc/passwd."""
    if not busybox.exists():
        raise procs.StartError(f"{busybox} is missing: install busybox-static (deploy/local/install)")
    listed = subprocess.run(
        [busybox, "--list-full"], capture_output=True, text=True, check=True
    ).stdout.split()
    applets = sorted({path for path in listed if path != "bin/busybox"})
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for folder, mode in FOLDERS:
            tar.addfile(_entry(folder, tarfile.DIRTYPE, mode))
        binary = busybox.read_bytes()
        tar.addfile(_entry("bin/busybox", tarfile.REGTYPE, 0o755, size=len(binary)), io.BytesIO(binary))
        for applet in applets:
            tar.addfile(_entry(applet, tarfile.SYMTYPE, 0o777, link="/bin/busybox"))
        for name, text in [("etc/passwd", PASSWD), ("etc/group", GROUP)]:
            data = text.encode()
            tar.addfile(_entry(name, tarfile.REGTYPE, 0o644, size=len(data)), io.BytesIO(data))
    return buf.getvalue()


def _entry(name: str, kind: bytes, mode: int, *, size: int = 0, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.size, info.linkname = kind, mode, size, link
    return info


def registry_digest(registry: str, name: str, tag: str, *, username: str, password: str) -> str | None:
    """Return the digest of `name:tag` in the registry, or None if it has no such tag."""
    request = registry_request(
        registry, f"{name}/manifests/{tag}", username=username, password=password,
        method="HEAD", headers={"Accept": MANIFEST_TYPES},
    )  # fmt: skip
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.headers.get("Docker-Content-Digest")
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return None
        raise


def seed(stack: Stack) -> str:
    """Import busybox:latest into the stack's engine if missing, and push it to its registry if stale."""
    import docker

    registry = stack.env["RACK_REGISTRY"]
    auth = {"username": stack.env["RACK_REGISTRY_USERNAME"], "password": stack.env["RACK_REGISTRY_PASSWORD"]}
    remote = f"{registry}/{NAME}"
    client = stack.docker()
    try:
        try:
            image = client.images.get(f"{NAME}:{TAG}")
        except docker.errors.ImageNotFound:
            client.api.import_image_from_data(rootfs_tar(), repository=NAME, tag=TAG, changes=CHANGES)
            image = client.images.get(f"{NAME}:{TAG}")
        if f"{remote}:{TAG}" not in image.tags:
            image.tag(remote, TAG)
        digest = registry_digest(registry, NAME, TAG, **auth)
        if digest is None or f"{remote}@{digest}" not in image.attrs.get("RepoDigests", []):
            _push(client, remote, auth)
    finally:
        client.close()
    return f"{remote}:{TAG}"


def _push(client, remote: str, auth: dict) -> None:
    for event in client.images.push(remote, tag=TAG, stream=True, decode=True, auth_config=auth):
        if "error" in event:
            raise procs.StartError(f"push of {remote}:{TAG} failed: {json.dumps(event)}")

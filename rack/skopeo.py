"""Copy images between registries and archives with Debian's `skopeo`, with no Docker engine involved.

Credentials go in a private auth file for the one command (never in argv); registries on loopback are
spoken to over plain HTTP, others over verified TLS. Failures become BadGateway with skopeo's own words.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import subprocess
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path

from rack.errors import BadGateway, Unavailable
from rack.scrub import scrub

TIMEOUT = 1800  # seconds for one copy: Convox allows 30 minutes per image too
LOOPBACK = ("127.0.0.1", "localhost", "[::1]", "::1")


def host_of(reference: str) -> str:
    """The registry host of `host[:port]/repo:tag` (Docker Hub's when the first part is no host)."""
    first = reference.split("/", 1)[0]
    named = "/" in reference and ("." in first or ":" in first or first == "localhost")
    return first if named else "docker.io"


def insecure(host: str) -> bool:
    """Loopback registries speak plain HTTP (as the Docker engine trusts them); others verified TLS."""
    name = host.split("]")[0] + "]" if host.startswith("[") else host.split(":")[0]
    return name in LOOPBACK


@contextlib.contextmanager
def authfile(creds: Mapping[str, tuple[str, str]]) -> Iterator[str]:
    """A private containers-auth.json holding `{host: (user, password)}`, removed afterwards."""
    auths = {
        host: {"auth": base64.b64encode(f"{user}:{password}".encode()).decode()}
        for host, (user, password) in creds.items()
        if user
    }
    fd, path = tempfile.mkstemp(prefix="rack-auth-", suffix=".json")  # mkstemp makes it 0600
    try:
        with os.fdopen(fd, "w") as out:
            json.dump({"auths": auths}, out)
        yield path
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)


def copy(
    src: str,
    dest: str,
    *,
    creds: Mapping[str, tuple[str, str]] | None = None,
    what: str,
    timeout: int = TIMEOUT,
) -> str:
    """Copy `src` to `dest` (`docker://…`, `oci-archive:…`, `docker-archive:…`); return the pushed digest.
    skopeo's temporary files go in a folder of the copy's own, removed afterwards."""
    args = []
    for flag, ref in (("--src-tls-verify=false", src), ("--dest-tls-verify=false", dest)):
        if ref.startswith("docker://") and insecure(host_of(ref.removeprefix("docker://"))):
            args.append(flag)
    with tempfile.TemporaryDirectory(prefix="rack-skopeo-") as tmp, authfile(creds or {}) as auth:
        digestfile = Path(tmp) / "digest"
        run(["copy", "--quiet", "--authfile", auth, "--digestfile", str(digestfile), *args, "--", src, dest],
            what=what, timeout=timeout, tmp=tmp)  # fmt: skip
        return digestfile.read_text().strip() if digestfile.exists() else ""


def inspect_raw(ref: str, *, creds: Mapping[str, tuple[str, str]] | None = None, what: str) -> bytes:
    """The raw manifest of `docker://…`, or BadGateway."""
    args = ["--tls-verify=false"] if insecure(host_of(ref.removeprefix("docker://"))) else []
    with authfile(creds or {}) as auth:
        return run(["inspect", "--raw", "--authfile", auth, *args, "--", ref], what=what, timeout=120)


def run(
    args: list[str],
    *,
    what: str,
    timeout: int,
    tmp: str | None = None,
) -> bytes:
    """Run skopeo with `args`; its output, or BadGateway with its last words (Unavailable if missing)."""
    env = {**os.environ, "TMPDIR": tmp} if tmp else None
    try:
        proc = subprocess.Popen(
            ["skopeo", *args], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            env=env, start_new_session=True,
        )  # fmt: skip
    except FileNotFoundError:
        raise Unavailable("skopeo is not installed on this rack (Debian package skopeo)") from None
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        raise BadGateway(f"{what}: skopeo did not finish within {timeout} s") from None
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    if proc.returncode != 0:
        message = err.decode(errors="replace").strip().splitlines()
        detail = scrub(message[-1] if message else f"exit status {proc.returncode}")
        raise BadGateway(f"{what}: {detail[:500]}")
    return out

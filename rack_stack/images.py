"""Build the rack's container images (API and worker) with a Docker engine.

`python -m rack_stack.images` (what `deploy/images/build` runs). The images come from
`deploy/images/Dockerfile`; the context is assembled here: the rack's packages and migrations under `src/`,
and every pinned dependency as a wheel under `wheels/` (built with the host's pip, so the image build needs
no index). The base is a build argument: the public Python image by default, or, with `--local-base`, a
Debian root filesystem made by `debootstrap` from Debian's packages and imported into the engine; its tar is
cached (`/var/cache/rack-images`), so it is made once per machine.
"""

from __future__ import annotations

import fcntl
import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import time
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import click

from rack_stack.procs import StartError

CHECKOUT = Path(__file__).resolve().parents[1]
DOCKERFILE = CHECKOUT / "deploy" / "images" / "Dockerfile"
SOURCES = ("rack", "rack_api", "rack_worker", "cli", "pyproject.toml")  # migrations: inside rack/
DOCKER_CLIENT = "/usr/bin/docker"  # Debian's 20.10 client: it drives the engine's BuildKit without buildx
TARGETS = ("api", "worker")
DEFAULT_CACHE = Path("/var/cache/rack-images")
DEFAULT_BASE = "python:3.11-slim-bookworm"
# The local base: Debian's python3 (3.11, as the public image) with venv, git for git sources, skopeo
# (exports, imports, `import-image` and fast pushes copy images with it), and CAs. debootstrap does not
# choose a provider of a virtual package: containernetworking-plugins is containers-common's
# `container-network-stack` (skopeo never runs a container).
SUITE = "bookworm"
PACKAGES = ("python3", "python3-venv", "git", "skopeo", "containernetworking-plugins", "ca-certificates")
DEBIAN_PYTHON = "/usr/bin/python3"
BASE_REPOSITORY = "rack-base/debian"
# Files of the root filesystem nothing in an image reads: downloaded packages, indexes, docs, translations.
LEFTOVERS = (
    "var/cache/apt/archives",
    "var/lib/apt/lists",
    "usr/share/doc",
    "usr/share/man",
    "usr/share/locale",
)
BASE_CHANGES = ["ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", 'CMD ["bash"]']


def mirror() -> str:
    """Return the Debian mirror this machine's apt uses (deb.debian.org if none is configured)."""
    for path in sorted(Path("/etc/apt/sources.list.d").glob("*.sources")):
        for line in path.read_text().splitlines():
            if line.startswith("URIs:") and "security" not in line:
                return line.split()[1]
    for path in [Path("/etc/apt/sources.list"), *Path("/etc/apt/sources.list.d").glob("*.list")]:
        for line in path.read_text().splitlines() if path.exists() else []:
            parts = line.split()
            if parts[:1] == ["deb"] and "security" not in line:
                return next(p for p in parts[1:] if p.startswith("http"))
    return "http://deb.debian.org/debian"


def base_tag() -> str:
    """Return the local base's image name; its tag changes when its recipe does."""
    recipe = json.dumps([SUITE, PACKAGES, BASE_CHANGES]).encode()
    return f"{BASE_REPOSITORY}:{SUITE}-{hashlib.sha256(recipe).hexdigest()[:12]}"


@contextmanager
def _locked(cache: Path, name: str) -> Iterator[None]:
    """Hold an exclusive lock on `cache/name.lock`, so two builds on one machine make a file once."""
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def base_rootfs(cache: Path = DEFAULT_CACHE, *, say=print) -> Path:
    """Return the cached tar of the local base's root filesystem, making it with debootstrap if missing."""
    name = base_tag().split(":")[1]
    tar = cache / f"{name}.tar"
    with _locked(cache, name):
        if tar.exists():
            return tar
        if not Path("/usr/sbin/debootstrap").exists():
            raise StartError("debootstrap is missing: apt-get install debootstrap (deploy/local/install)")
        began = time.monotonic()
        say(f"making the local base with debootstrap ({SUITE}, {', '.join(PACKAGES)}); takes minutes, once")
        with tempfile.TemporaryDirectory(prefix="rack-rootfs-", dir=cache) as tmp:
            root = Path(tmp) / "root"
            argv = [
                "debootstrap",
                "--variant=minbase",
                f"--include={','.join(PACKAGES)}",
                SUITE,
                root,
                mirror(),
            ]
            result = subprocess.run([str(a) for a in argv], capture_output=True, text=True)
            if result.returncode != 0:
                raise StartError(f"debootstrap failed ({result.returncode}):\n{result.stdout[-3000:]}")
            for leftover in LEFTOVERS:
                subprocess.run(["find", root / leftover, "-type", "f", "-delete"], check=True)
            partial = tar.with_suffix(".tar.partial")
            subprocess.run(["tar", "-C", root, "--numeric-owner", "-cf", partial, "."], check=True)
            partial.rename(tar)
        say(f"local base made in {time.monotonic() - began:.0f} s: {tar}")
        return tar


def ensure_local_base(client, cache: Path = DEFAULT_CACHE, *, say=print) -> str:
    """Return the local base's name, importing it into the engine from the cached tar if needed."""
    import docker

    tag = base_tag()
    try:
        client.images.get(tag)
        return tag
    except docker.errors.ImageNotFound:
        pass
    tar = base_rootfs(cache, say=say)
    repository, version = tag.split(":")
    client.api.import_image_from_file(str(tar), repository=repository, tag=version, changes=BASE_CHANGES)
    client.images.get(tag)  # raises if the import did not make it
    return tag


def requirements() -> list[str]:
    """Return the rack's pinned runtime dependencies, from pyproject.toml."""
    return tomllib.loads((CHECKOUT / "pyproject.toml").read_text())["project"]["dependencies"]


def wheelhouse(cache: Path = DEFAULT_CACHE, *, say=print) -> Path:
    """Return a folder of wheels for every dependency (and requirements.txt), built once per pin set."""
    pins = "\n".join(requirements()) + "\n"
    folder = cache / f"wheels-{hashlib.sha256(pins.encode()).hexdigest()[:12]}"
    with _locked(cache, folder.name):
        if (folder / "requirements.txt").exists():
            return folder
        say("collecting wheels of the pinned dependencies")
        partial = folder.with_name(folder.name + ".partial")
        partial.mkdir(parents=True, exist_ok=True)
        (partial / "requirements.in").write_text(pins)
        # Markers can differ between patch releases (redis wants async-timeout below 3.11.3): resolve with
        # Debian's python3, which the local base has, and with this one, close to the public image's.
        for python in dict.fromkeys(p for p in (DEBIAN_PYTHON, sys.executable) if Path(p).exists()):
            argv = [python, "-m", "pip", "wheel", "-q", "-w", partial, "-r", partial / "requirements.in"]
            result = subprocess.run([str(a) for a in argv], capture_output=True, text=True)
            if result.returncode != 0:
                raise StartError(
                    f"pip wheel ({python}) failed ({result.returncode}):\n{result.stderr[-3000:]}"
                )
        (partial / "requirements.in").rename(partial / "requirements.txt")
        partial.rename(folder)
        return folder


def context(wheels: Path) -> bytes:
    """Return the build context as a tar: the Dockerfile, src/ (packages, migrations) and wheels/."""

    def skip(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
        return None if "__pycache__" in info.name or info.name.endswith(".pyc") else info

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        tar.add(DOCKERFILE, "Dockerfile")
        for name in SOURCES:
            tar.add(CHECKOUT / name, f"src/{name}", filter=skip)
        tar.add(wheels, "wheels", filter=skip)
        # The worker's BuildKit builds run Debian's docker client (one binary that needs only libc).
        if not Path(DOCKER_CLIENT).is_file():
            raise StartError(f"{DOCKER_CLIENT} is missing: install docker.io (deploy/local/install)")
        tar.add(DOCKER_CLIENT, "bin/docker")
    return buf.getvalue()


def build(client, *, base: str, tag_prefix: str = "rack", version: str = "dev",
          cache: Path = DEFAULT_CACHE, say=print) -> dict[str, str]:  # fmt: skip
    """Build both targets on `base`; return {target: image name} (`<prefix>-api:<version>`, …)."""
    body = context(wheelhouse(cache, say=say))
    images = {}
    for target in TARGETS:
        name = f"{tag_prefix}-{target}:{version}"
        say(f"building {name} (base {base})")
        errors, tail = [], []
        for event in client.api.build(
            fileobj=io.BytesIO(body),
            custom_context=True,
            tag=name,
            target=target,
            buildargs={"BASE": base},
            network_mode="host",  # only used if the base lacks git; the engine may have no bridge
            rm=True,
            forcerm=True,
            decode=True,
        ):
            if "error" in event:
                errors.append(event["error"])
            tail = [*tail[-40:], event.get("stream", "")]
        if errors:
            raise StartError(f"building {name} failed: {''.join(errors)}\n{''.join(tail)}")
        images[target] = name
    return images


@click.command()
@click.option("--docker-host", default=lambda: os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock"),
              help="The engine to build with [default: $DOCKER_HOST or the system socket]")  # fmt: skip
@click.option("--base", default=None, help=f"Base image [default: {DEFAULT_BASE}]")
@click.option("--local-base", is_flag=True, help="Make the base from Debian's packages (no outside registry)")
@click.option("--tag-prefix", default="rack", show_default=True)
@click.option("--version", default="dev", show_default=True)
@click.option(
    "--cache", type=click.Path(file_okay=False, path_type=Path), default=DEFAULT_CACHE, show_default=True
)
@click.option("--push", "push_to", default="", help="Also tag and push both images to this registry")
def main(docker_host, base, local_base, tag_prefix, version, cache, push_to) -> None:
    """Build the rack's API and worker images."""
    import docker

    if base and local_base:
        raise click.UsageError("--base and --local-base exclude each other")
    client = docker.DockerClient(base_url=docker_host, timeout=600)
    try:
        chosen = ensure_local_base(client, cache) if local_base else (base or DEFAULT_BASE)
        images = build(client, base=chosen, tag_prefix=tag_prefix, version=version, cache=cache)
        for name in images.values():
            if push_to:
                remote = f"{push_to}/{name}"
                client.images.get(name).tag(remote)
                for event in client.images.push(remote, stream=True, decode=True):
                    if "error" in event:
                        raise click.ClickException(f"push of {remote} failed: {event['error']}")
                name = remote
            click.echo(name)
    except (StartError, docker.errors.DockerException) as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        client.close()


if __name__ == "__main__":
    main()

"""Builds the rack does not run itself: `convox build --external` (built and pushed by the local engine)
and `convox builds import-image SRC` (copied by the rack from a registry), in the steps Convox's CLI takes:
create the build with `external=true`, send the manifest, make the images, then create and link the release.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import BinaryIO
from urllib.parse import unquote, urlparse

import click

from cli.appname import app_option, subcommand_app
from cli.builds import builds
from cli.client import RackClient

POLL = 2  # seconds between looks at an importing build, as Convox's CLI polls
IMPORT_WAIT = 2 * 3600


def _manifest_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise click.ClickException(f"read manifest {path}: {exc.strerror or exc}") from None


def _release(client: RackClient, app: str, build: dict, description: str = "") -> dict:
    """Create the release of a complete external build and link it, as Convox's CLI does."""
    release = client.post(
        f"/apps/{app}/releases",
        data={"build": build["id"], **({"description": description} if description else {})},
    )
    return client.put(f"/apps/{app}/builds/{build['id']}", data={"release": release["id"]})


def build_external(
    client: RackClient,
    app: str,
    directory: str,
    *,
    description: str,
    git_sha: str,
    manifest: str,
    build_args: tuple[str, ...],
    no_cache: bool,
    development: bool,
    out: BinaryIO,
) -> dict:
    """Build each service with the local Docker engine, push it to the rack's registry, release it."""
    import docker
    import docker.errors

    from rack.errors import RackError
    from rack.pipeline import manifest as manifests

    text = _manifest_text(Path(directory) / manifest)
    try:
        parsed = manifests.load(text, os.environ, filename=manifest)
    except RackError as exc:
        raise click.ClickException(exc.message) from None
    form = {"external": "true", "description": description, "manifest": manifest, "git-sha": git_sha}
    build = client.post(f"/apps/{app}/builds", data=form)
    client.put(f"/apps/{app}/builds/{build['id']}", data={"manifest": text})
    u = urlparse(build["repository"])
    repo = f"{u.netloc.rsplit('@', 1)[-1]}{u.path}"
    auth = {"username": unquote(u.username), "password": unquote(u.password or "")} if u.username else None
    args = {a.split("=", 1)[0]: a.split("=", 1)[1] if "=" in a else os.environ.get(a, "") for a in build_args}
    engine = docker.from_env()
    try:
        for service in parsed.services:
            tag = f"{repo}:{service.name}.{build['id']}"
            if service.image:
                out.write(f"Running: docker pull {service.image}\n".encode())
                engine.images.pull(service.image)
                engine.images.get(service.image).tag(tag)
            else:
                path = Path(directory) / (service.build_path or ".")
                out.write(f"Building: {path}\n".encode())
                for event in engine.api.build(
                    path=str(path), dockerfile=service.dockerfile or "Dockerfile", tag=tag, buildargs=args,
                    nocache=no_cache, target="development" if development else None, decode=True, rm=True,
                ):  # fmt: skip
                    if "stream" in event:
                        out.write(event["stream"].encode())
                    if "error" in event:
                        raise click.ClickException(f"building {service.name}: {event['error'].strip()}")
            out.write(f"Running: docker push {tag}\n".encode())
            for event in engine.api.push(tag, auth_config=auth, stream=True, decode=True):
                if "error" in event:
                    raise click.ClickException(f"pushing {tag}: {event['error']}")
            out.flush()
    except docker.errors.DockerException as exc:
        client.put(f"/apps/{app}/builds/{build['id']}", data={"status": "failed"})
        raise click.ClickException(f"the local Docker engine: {exc}") from None
    except click.ClickException:
        client.put(f"/apps/{app}/builds/{build['id']}", data={"status": "failed"})
        raise
    finally:
        engine.close()
    client.put(f"/apps/{app}/builds/{build['id']}", data={"status": "complete"})
    return _release(client, app, build, description)


def _password(user: str | None, plain: str | None, env: str | None, stdin: bool) -> str:
    given = [x for x in (plain, env, stdin or None) if x]
    if len(given) > 1:
        raise click.UsageError(
            "at most one of --src-creds-pass, --src-creds-pass-env, --src-creds-pass-stdin"
        )
    if plain:
        click.echo(
            "WARNING: --src-creds-pass shows the password to process listings; prefer -env or -stdin",
            err=True,
        )
        return plain
    if env:
        if env not in os.environ:
            raise click.UsageError(f"--src-creds-pass-env={env}: environment variable not set")
        return os.environ[env]
    if stdin:
        line = sys.stdin.readline().rstrip("\n")
        if not line:
            raise click.UsageError("--src-creds-pass-stdin: no input received")
        return line
    return ""


@builds.command(name="import-image")
@click.argument("source", metavar="SRC")
@app_option
@click.option("-m", "--manifest", default="convox.yml", show_default=True, help="the manifest to send")
@click.option("--src-creds-user", help="source registry username")
@click.option(
    "--src-creds-pass", help="source registry password (shown to process listings: prefer the next two)"
)
@click.option("--src-creds-pass-env", metavar="NAME", help="read the source registry password from $NAME")
@click.option("--src-creds-pass-stdin", is_flag=True, help="read the source registry password from stdin")
@click.pass_context
def import_image(
    ctx: click.Context, source: str, app: str | None, manifest: str, src_creds_user: str | None,
    src_creds_pass: str | None, src_creds_pass_env: str | None, src_creds_pass_stdin: bool,
) -> None:  # fmt: skip
    """Import a prebuilt image (from any registry the rack reaches) as a new build and release."""
    app = subcommand_app(ctx, app)
    password = _password(src_creds_user, src_creds_pass, src_creds_pass_env, src_creds_pass_stdin)
    text = _manifest_text(Path(manifest))
    client = RackClient()
    click.echo("Creating build... ", nl=False)
    build = client.post(f"/apps/{app}/builds", data={"external": "true", "manifest": Path(manifest).name})
    client.put(f"/apps/{app}/builds/{build['id']}", data={"manifest": text})
    click.echo(f"OK, {build['id']}")
    click.echo(f"Relaying image {source}... ", nl=False)
    form = {"image": source, **({"src-creds-user": src_creds_user} if src_creds_user else {})}
    if password:
        form["src-creds-pass"] = password
    client.request("POST", f"/apps/{app}/builds/{build['id']}/image", data=form, expect_json=False)
    click.echo("OK")
    click.echo("Waiting for import to complete... ", nl=False)
    deadline = time.monotonic() + IMPORT_WAIT
    while True:
        current = client.get(f"/apps/{app}/builds/{build['id']}")
        if current["status"] == "complete":
            break
        if current["status"] == "failed":
            raise click.ClickException(f"import failed: {current.get('reason') or 'no reason given'}")
        if time.monotonic() > deadline:
            raise click.ClickException(
                f"import {build['id']} timed out; check: convox builds info {build['id']}"
            )
        time.sleep(POLL)
    click.echo("OK")
    click.echo("Creating release... ", nl=False)
    done = _release(client, app, current)
    click.echo(f"OK, {done['release']}")
    click.echo(f"Build:   {done['id']}")
    click.echo(f"Release: {done['release']}")

"""`convox build` and `convox deploy`: package, upload, build, follow the log, and promote."""

from __future__ import annotations

import os
import secrets
import subprocess
from dataclasses import dataclass
from typing import BinaryIO

import click

from cli import sources, terminal
from cli.appname import app_option, resolve_app
from cli.client import RackClient
from cli.logs import follow_build
from cli.settings import config_dir
from cli.source import Upload, package, size_of


@dataclass
class Say:
    """Progress messages: stdout normally, stderr under `--id` so stdout holds only the release id."""

    quiet: bool

    def __call__(self, message: str, *, nl: bool = True) -> None:
        click.echo(message, nl=nl, err=self.quiet)

    def binary(self) -> BinaryIO:
        return click.get_binary_stream("stderr" if self.quiet else "stdout")


class LineEnd:
    """Pass log bytes through, remembering whether the last one ended a line."""

    def __init__(self, out: BinaryIO) -> None:
        self.out, self.at_line_start = out, True

    def write(self, data: bytes) -> int:
        if data:
            self.at_line_start = data.endswith(b"\n")
        return self.out.write(data)

    def flush(self) -> None:
        self.out.flush()

    def finish_line(self) -> None:
        """End a log whose last line had no newline, so what follows starts on its own line."""
        if not self.at_line_start:
            self.write(b"\n")
        self.flush()


def build_options(fn):
    """Attach the flags `convox build` and `convox deploy` share."""
    options = [
        click.argument("directory", default=".", metavar="[DIR | GIT_URL[#REF]]"),
        app_option,
        click.option(
            "-d", "--description", default=None, help="describe the build (default: the git commit)"
        ),
        click.option("-m", "--manifest", default="convox.yml", show_default=True, help="the manifest file"),
        click.option(
            "--build-args", "build_args", multiple=True, metavar="K=V", help="a build arg (repeatable)"
        ),
        click.option("--no-cache", is_flag=True, help="build without the Docker layer cache"),
        click.option("--development", is_flag=True, help="build the Dockerfile's development target"),
        click.option("--id", "id_only", is_flag=True, help="logs on stderr, only the release id on stdout"),
        click.option("--external", is_flag=True, help="build with the local Docker engine, push to the rack"),
        click.option("-w", "--wait", is_flag=True, hidden=True, help="accepted for v2 compatibility"),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def is_git_url(source: str) -> bool:
    """A source the rack fetches itself (`https://host/repo.git#ref`), not a folder to upload."""
    return source.startswith(("https://", "http://", "git://", "ssh://"))


def _git(directory: str, *args: str) -> str | None:
    """Run git in the folder; None when git is missing or says no."""
    try:
        proc = subprocess.run(
            ["git", "-C", directory, *args], capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return proc.stdout if proc.returncode == 0 else None


def git_details(directory: str, description: str | None) -> tuple[str, str]:
    """Return (description, git-sha): a clean checkout describes itself as Convox does."""
    if description is None:
        description = ""
        if _git(directory, "diff", "--quiet") is not None:
            head = _git(directory, "log", "-n", "1", "--pretty=%h %s", "--abbrev=10")
            if head:
                description = f"build {head.splitlines()[0]}"
    sha = (_git(directory, "rev-parse", "HEAD") or "").strip()
    return description, sha


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _progress():
    """Show the upload's percentage on a terminal's stderr; nothing when stderr is not a terminal."""
    err = click.get_text_stream("stderr")
    if not err.isatty():
        return None, lambda: None
    last = [-1]

    def show(sent: int, total: int) -> None:
        pct = sent * 100 // total if total else 100
        if pct != last[0]:
            last[0] = pct
            err.write(f"{pct:3d}%\b\b\b\b")
            err.flush()

    def clear() -> None:
        err.write("    \b\b\b\b")
        err.flush()

    return show, clear


def upload_limit(client: RackClient) -> int:
    """The largest upload the rack accepts, in bytes (0: it does not say)."""
    return int((client.get("/system").get("parameters") or {}).get("MaxUploadBytes") or 0)


def _over_limit(what: str, size: int, limit: int) -> click.ClickException:
    return click.ClickException(
        f"{what} is {_human(size)} but the rack accepts at most {_human(limit)}:"
        " list large or generated files in .dockerignore"
    )


def upload(client: RackClient, app: str, fh: BinaryIO, say: Say) -> str:
    """Upload the packaged source as a temp object of the app; return its object:// URL."""
    limit = upload_limit(client)
    size = size_of(fh)
    if limit and size > limit:
        raise _over_limit("the source", size, limit)
    say("Uploading source... ", nl=False)
    show, clear = _progress()
    try:
        obj = client.post(
            f"/apps/{app}/objects/tmp/{secrets.token_hex(15)}.tgz",
            data=Upload(fh, progress=show),
            headers={"Content-Type": "application/octet-stream"},
            timeout=(30, 600),
        )
    finally:
        clear()
    say("OK")
    return obj["Url"]


def send_tree(client: RackClient, app: str, directory: str, manifest: str, say: Say) -> str | None:
    """Send only the contents the rack lacks; return the tree's URL (None: the rack takes archives only)."""
    say("Hashing source... ", nl=False)
    try:
        tree = sources.scan(directory, manifest=manifest, cache=config_dir() / "hashes.json")
    except OSError as exc:
        raise click.ClickException(f"cannot read {directory}: {exc}") from None
    say(f"OK ({tree.files:,} files, {sources.human(tree.size)})")
    limit = upload_limit(client)
    if big := sources.too_large(tree, limit):
        raise _over_limit(f"the file {big[0]}", big[1], limit)
    say("Uploading source... ", nl=False)
    show, clear = _progress()
    try:
        sent = sources.send(client, app, tree, progress=show, limit=limit)
    finally:
        clear()
    if sent is None:
        say("the rack takes whole archives")
        return None
    say(f"OK ({sent.summary()})")
    return sent.url


def send_archive(client: RackClient, app: str, directory: str, manifest: str, say: Say) -> str:
    """Package the folder as one archive and upload it (what Convox's own racks take)."""
    say("Packaging source... ", nl=False)
    try:
        fh = package(directory, manifest=manifest)
    except OSError as exc:
        raise click.ClickException(f"cannot package {directory}: {exc}") from None
    with fh:
        say("OK")
        return upload(client, app, fh, say)


def run_build(
    directory: str,
    *,
    app: str | None,
    description: str | None,
    manifest: str,
    build_args: tuple[str, ...],
    no_cache: bool,
    development: bool,
    say: Say,
    external: bool = False,
) -> tuple[RackClient, str, dict]:
    """Package, upload, start and follow a build; return the client, the app and the finished build."""
    remote = is_git_url(directory)
    if not remote and not os.path.isdir(directory):
        raise click.BadParameter(f"{directory!r} is neither a folder nor a git URL", param_hint="DIR")
    client = RackClient()
    app = resolve_app(app, "." if remote else directory)
    for arg in build_args:
        if "," in arg:
            raise click.BadParameter(f"{arg!r}: values cannot contain commas", param_hint="--build-args")
    if external:  # the local engine builds and pushes; the rack records the build and its release
        if remote:
            raise click.BadParameter("--external builds a folder, not a git URL", param_hint="DIR")
        from cli.external import build_external

        description, git_sha = git_details(directory, description)
        client.get(f"/apps/{app}")
        done = build_external(
            client, app, directory, description=description, git_sha=git_sha, manifest=manifest,
            build_args=build_args, no_cache=no_cache, development=development, out=say.binary(),
        )  # fmt: skip
        return client, app, done
    if remote:  # the rack clones it: the worker records the commit it checked out
        description, git_sha, url = description or "", "", directory
        client.get(f"/apps/{app}")
    else:
        description, git_sha = git_details(directory, description)
        client.get(f"/apps/{app}")  # a missing app fails here, before packaging a large folder
        url = send_tree(client, app, directory, manifest, say) or send_archive(
            client, app, directory, manifest, say
        )

    say("Starting build... ", nl=False)
    form = {"url": url, "description": description, "manifest": manifest, "git-sha": git_sha}
    if build_args:
        form["build-args"] = ",".join(build_args)
    if no_cache:
        form["no-cache"] = "true"
    if development:
        form["development"] = "true"
    started = client.post(f"/apps/{app}/builds", data=form)
    say("OK")

    safe = terminal.for_terminal(say.binary())
    out = LineEnd(safe)
    build = follow_build(client, app, started["id"], out=out)
    terminal.end(safe)
    out.finish_line()
    if build.get("status") != "complete":
        reason = build.get("reason") or f"the build ended as {build.get('status') or 'unknown'}"
        raise click.ClickException(f"build failed: {reason}")
    return client, app, build


def _finish(build: dict, say: Say) -> None:
    say(f"Build:   {build['id']}")
    say(f"Release: {build['release']}")


@click.command()
@build_options
def build(directory: str, id_only: bool, wait: bool, **opts) -> None:
    """Build an app from a folder or a git URL (`https://host/repo.git#ref`) and create a release."""
    say = Say(quiet=id_only)
    _, _, result = run_build(directory, say=say, **opts)
    _finish(result, say)
    if id_only:
        click.echo(result["release"], nl=False)


@click.command()
@build_options
@click.option("--force", is_flag=True, help="accepted for compatibility: promotion never waits on a rollout")
def deploy(directory: str, id_only: bool, wait: bool, force: bool, **opts) -> None:
    """Build an app from a folder or a git URL and promote the release."""
    say = Say(quiet=id_only)
    client, app, result = run_build(directory, say=say, **opts)
    _finish(result, say)
    say(f"Promoting {result['release']}... ", nl=False)
    client.post(f"/apps/{app}/releases/{result['release']}/promote", expect_json=False)
    say("OK")
    if id_only:
        click.echo(result["release"], nl=False)

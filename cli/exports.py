"""`convox builds export` and `convox builds import`: move a build and its images as one .tgz.

Both stream: export writes the archive as the rack makes it, and import sends its input as a chunked body
read as it comes, so `convox builds export … | convox builds import …` needs no seekable input (Convox's
piped import fails with EOF; a temp file was its workaround).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import BinaryIO

import click

from cli.appname import app_option, subcommand_app
from cli.builds import builds
from cli.client import RackClient
from cli.source import Upload

CHUNK = 1024 * 1024
# Connect, then read: an export may pause while the rack saves an image, and an import answers only
# once every image is loaded and pushed.
TIMEOUT = (30, 3600)


@builds.command(name="export")
@click.argument("build_id", metavar="ID")
@app_option
@click.option(
    "-f", "--file", "path", type=click.Path(dir_okay=False), help="write the archive here (default: stdout)"
)
@click.pass_context
def build_export(ctx: click.Context, build_id: str, app: str | None, path: str | None) -> None:
    """Export a complete build and its images as a .tgz."""
    app = subcommand_app(ctx, app)
    stdout = click.get_binary_stream("stdout")
    if path is None and stdout.isatty():
        raise click.ClickException("pipe this command into a file or specify --file")
    click.echo("Exporting build... ", nl=False, err=True)
    client = RackClient(timeout=TIMEOUT)
    import requests

    resp = client.get(f"/apps/{app}/builds/{build_id}.tgz", expect_json=False, stream=True)
    try:
        with resp, open(path, "wb") if path else contextlib.nullcontext(stdout) as out:
            for chunk in resp.iter_content(CHUNK):
                out.write(chunk)
            out.flush()
    except (requests.RequestException, OSError) as exc:
        if path:  # never leave a partial archive that looks like an export
            with contextlib.suppress(OSError):
                os.unlink(path)
        raise click.ClickException(f"the export broke off: {exc}") from None
    click.echo("OK", err=True)


def chunks(fh: BinaryIO) -> Iterator[bytes]:
    """Yield a stream's bytes as they arrive; requests sends a generator as a chunked body."""
    read = getattr(fh, "read1", fh.read)  # read1: whatever the pipe holds now, not a full chunk
    while chunk := read(CHUNK):
        yield chunk


@builds.command(name="import")
@app_option
@click.option(
    "-f", "--file", "path", type=click.Path(exists=True, dir_okay=False), help="read the archive here"
)
@click.option("--id", "id_only", is_flag=True, help="print only the new release id on stdout")
@click.pass_context
def build_import(ctx: click.Context, app: str | None, path: str | None, id_only: bool) -> None:
    """Import a build made by `convox builds export` (of any app or rack) as a new build and release."""
    app = subcommand_app(ctx, app)
    stdin = click.get_binary_stream("stdin")
    if path is None and stdin.isatty():
        raise click.ClickException("pipe a file into this command or specify --file")
    click.echo("Importing build... ", nl=False, err=True)
    client = RackClient(timeout=TIMEOUT)
    with open(path, "rb") if path else contextlib.nullcontext(stdin) as fh:
        body = Upload(fh) if path else chunks(fh)  # a file's length is known: the rack checks it first
        build = client.post(
            f"/apps/{app}/builds/import", data=body, headers={"Content-Type": "application/octet-stream"}
        )
    click.echo(f"OK, {build['release']}", err=True)
    if id_only:
        click.echo(build["release"], nl=False)

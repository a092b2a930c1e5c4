"""Follow a build's log to its end, resuming by byte offset when the connection drops: `convox builds logs`.

The exit status comes from the build, never from the stream: when the stream ends (cleanly or not) the
build is fetched, and a build that is not final yet is followed again from the bytes already written.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

import click

from cli import terminal
from cli.appname import app_option, subcommand_app
from cli.builds import builds
from cli.client import RackClient, check, short

if TYPE_CHECKING:
    import requests

FINAL = ("complete", "failed")
ATTEMPTS = 8  # consecutive failures to reach the rack before giving up (about 30 s with the backoff)
BACKOFF = 0.5
READ_TIMEOUT = 90  # a quiet log is normal; past this the stream is re-opened in case it silently died


class _Unreachable(Exception):
    """The rack did not answer (refused, reset, timed out, or 5xx)."""


class Writer(Protocol):
    """Where a followed log goes: a binary file, or anything that writes and flushes bytes like one."""

    def write(self, data: bytes, /) -> int: ...

    def flush(self) -> None: ...


def follow_build(
    client: RackClient,
    app: str,
    build_id: str,
    *,
    out: Writer,
    follow: bool = True,
    attempts: int = ATTEMPTS,
    backoff: float = BACKOFF,
) -> dict:
    """Copy a build's log to `out` until the build is final (without `follow`: what exists); return it."""
    received = failures = 0
    said = False

    def started(status: str) -> None:
        nonlocal said
        if follow and status == "created" and not received and not said:
            click.echo(f"waiting for a worker to start build {build_id}…", err=True)
            said = True

    while True:
        try:
            sent, clean = _stream(
                client, app, build_id, out=out, offset=received, follow=follow, started=started
            )
            received += sent
            build = _get_build(client, app, build_id)
            failures = 0
            if clean and (not follow or build["status"] in FINAL):
                return build
            if not clean or sent:
                continue  # dropped, timed out or cut short: resume from the bytes already written, at once
        except _Unreachable as exc:
            failures += 1
            if failures >= attempts:
                raise click.ClickException(
                    f"lost the log of build {build_id} after {received} bytes: the rack at"
                    f" {client.endpoint.url} did not answer {failures} times in a row ({exc})"
                ) from None
        time.sleep(min(backoff * 2 ** max(failures - 1, 0), 8))


def _stream(
    client: RackClient,
    app: str,
    build_id: str,
    *,
    out: Writer,
    offset: int,
    follow: bool,
    started: Callable[[str], None],
) -> tuple[int, bool]:
    """Copy the log from `offset` to `out`; return the bytes copied and whether the stream ended cleanly."""
    sent = 0
    connected = False
    url = client.url(f"/apps/{app}/builds/{build_id}/logs")
    params = {"offset": offset, "follow": "true" if follow else "false"}
    import requests

    try:
        with client.session.get(url, params=params, stream=True, timeout=(10, READ_TIMEOUT)) as resp:
            if resp.status_code >= 500:
                raise _Unreachable(f"{resp.status_code} {_error(resp)}")
            check(resp)  # 4xx: the build or app does not exist, or the password is wrong
            connected = True
            started(resp.headers.get("X-Build-Status", ""))
            for chunk in resp.iter_content(chunk_size=None):
                out.write(chunk)
                out.flush()
                sent += len(chunk)
            return sent, True
    except (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError) as exc:
        if not connected:
            raise _Unreachable(short(exc, 160)) from None
        return sent, False


def _get_build(client: RackClient, app: str, build_id: str) -> dict:
    import requests

    try:
        resp = client.session.get(client.url(f"/apps/{app}/builds/{build_id}"), timeout=(10, 30))
    except (requests.ConnectionError, requests.Timeout) as exc:
        raise _Unreachable(short(exc, 160)) from None
    if resp.status_code >= 500:
        raise _Unreachable(f"{resp.status_code} {_error(resp)}")
    check(resp)
    return resp.json()


def _error(resp: requests.Response) -> str:
    try:
        return resp.json().get("error") or resp.reason
    except ValueError:
        return resp.reason


@builds.command(name="logs")
@click.argument("build_id", metavar="ID")
@app_option
@click.option("--no-follow", is_flag=True, help="print the log so far and stop")
@click.pass_context
def builds_logs(ctx: click.Context, build_id: str, app: str | None, no_follow: bool) -> None:
    """Show a build's log, following it until the build ends; exit non-zero if the build failed."""
    app = subcommand_app(ctx, app)
    out = terminal.for_terminal(click.get_binary_stream("stdout"))
    build = follow_build(RackClient(), app, build_id, out=out, follow=not no_follow)
    terminal.end(out)
    if not no_follow and build["status"] != "complete":
        reason = build.get("reason") or f"the build ended as {build['status']}"
        raise click.ClickException(f"build failed: {reason}")

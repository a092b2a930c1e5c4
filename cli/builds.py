"""`convox builds` and `builds info`."""

from __future__ import annotations

import click

from cli.appname import app_option, resolve_app, subcommand_app
from cli.client import RackClient
from cli.output import ago, elapsed, info, table


@click.group(invoke_without_command=True)
@app_option
@click.option("-l", "--limit", type=click.IntRange(1, 1000), default=10, show_default=True)
@click.pass_context
def builds(ctx: click.Context, app: str | None, limit: int) -> None:
    """List an app's builds, newest first."""
    ctx.ensure_object(dict)["app"] = app
    if ctx.invoked_subcommand is not None:
        return
    app = resolve_app(app)
    rows = RackClient().get(f"/apps/{app}/builds", params={"limit": limit})
    table(
        ["ID", "STATUS", "RELEASE", "STARTED", "ELAPSED", "DESCRIPTION"],
        [
            [
                b["id"],
                b["status"],
                b["release"],
                ago(b["started"]),
                elapsed(b["started"], b["ended"]),
                b["description"],
            ]
            for b in rows
        ],
    )


def format_images(images: dict) -> str:
    """Show image digests as `service=digest`, one service after another."""
    return " ".join(f"{name}={image.get('digest', '')}" for name, image in sorted(images.items()))


@builds.command(name="info")
@click.argument("build_id", metavar="ID")
@app_option
@click.pass_context
def build_info(ctx: click.Context, build_id: str, app: str | None) -> None:
    """Show a build."""
    app = subcommand_app(ctx, app)
    b = RackClient().get(f"/apps/{app}/builds/{build_id}")
    rows = [
        ("Id", b["id"]),
        ("Status", b["status"]),
        ("Release", b["release"]),
        ("Description", b["description"]),
        ("Started", ago(b["started"])),
        ("Elapsed", elapsed(b["started"], b["ended"])),
    ]
    if b.get("position"):
        rows.append(("Position", f"{b['position']} in the queue"))
    if b.get("attempt", 1) > 1:
        rows.append(("Attempt", str(b["attempt"])))
    if b["status"] == "failed":
        rows.append(("Reason", b.get("reason") or ""))
    if b.get("images"):
        rows.append(("Images", format_images(b["images"])))
    info(rows)


@builds.command(name="cancel")
@click.argument("build_id", metavar="ID")
@app_option
@click.pass_context
def build_cancel(ctx: click.Context, build_id: str, app: str | None) -> None:
    """Cancel a build: a queued one never runs, a running one is stopped."""
    app = subcommand_app(ctx, app)
    click.echo(f"Cancelling {build_id}... ", nl=False)
    b = RackClient().post(f"/apps/{app}/builds/{build_id}/cancel")
    click.echo("OK" if b["reason"].startswith("cancelled") else f"already {b['status']}")

"""`convox apps`, `apps create`, `apps delete`, `apps info`."""

from __future__ import annotations

import click

from cli.client import RackClient
from cli.output import info, table


@click.group(invoke_without_command=True)
@click.pass_context
def apps(ctx: click.Context) -> None:
    """List apps."""
    if ctx.invoked_subcommand is None:
        rows = RackClient().get("/apps")
        table(["APP", "STATUS", "RELEASE"], [[a["name"], a["status"], a["release"]] for a in rows])


@apps.command()
@click.argument("name")
@click.option("--timeout", type=int, help="the app's build timeout in seconds (default: the rack's)")
def create(name: str, timeout: int | None) -> None:
    """Create an app."""
    client = RackClient()
    click.echo(f"Creating {name}... ", nl=False)
    client.post("/apps", data={"name": name, **({"timeout": str(timeout)} if timeout else {})})
    click.echo("OK")


@apps.command()
@click.argument("name")
@click.option("--timeout", required=True, help="build timeout in seconds; empty for the rack's default")
def update(name: str, timeout: str) -> None:
    """Change an app's build timeout."""
    client = RackClient()
    click.echo(f"Updating {name}... ", nl=False)
    client.put(f"/apps/{name}", data={"timeout": timeout})
    click.echo("OK")


@apps.command()
@click.argument("name")
def delete(name: str) -> None:
    """Delete an app with its builds, releases and objects."""
    client = RackClient()
    click.echo(f"Deleting {name}... ", nl=False)
    client.delete(f"/apps/{name}")
    click.echo("OK")


@apps.command(name="info")
@click.argument("name")
def app_info(name: str) -> None:
    """Show an app."""
    a = RackClient().get(f"/apps/{name}")
    rows = [
        ("Name", a["name"]),
        ("Status", a["status"]),
        ("Generation", a["generation"]),
        ("Release", a["release"]),
    ]
    if a["parameters"].get("BuildTimeout"):
        rows.append(("BuildTimeout", a["parameters"]["BuildTimeout"]))
    info(rows)

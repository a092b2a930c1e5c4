"""`convox apps`, `apps create`, `apps delete`, `apps info`, `apps lock`/`unlock`, `apps params [set]`."""

from __future__ import annotations

from urllib.parse import urlencode

import click

from cli.appname import app_option, resolve_app, subcommand_app
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
    if a.get("locked"):
        rows.append(("Locked", "true"))
    if a["parameters"].get("BuildTimeout"):
        rows.append(("BuildTimeout", a["parameters"]["BuildTimeout"]))
    info(rows)


def _set_lock(name: str | None, locked: bool) -> None:
    app = resolve_app(name)
    client = RackClient()
    click.echo(f"{'Locking' if locked else 'Unlocking'} {app}... ", nl=False)
    client.put(f"/apps/{app}", data={"lock": "true" if locked else "false"})
    click.echo("OK")


@apps.command()
@click.argument("name", required=False)
def lock(name: str | None) -> None:
    """Lock an app: it can not be deleted, nor its releases promoted, until unlocked."""
    _set_lock(name, True)


@apps.command()
@click.argument("name", required=False)
def unlock(name: str | None) -> None:
    """Unlock an app."""
    _set_lock(name, False)


@apps.group(invoke_without_command=True)
@app_option
@click.pass_context
def params(ctx: click.Context, app: str | None) -> None:
    """Show an app's parameters (BuildTimeout)."""
    ctx.obj = {**(ctx.obj or {}), "app": app}
    if ctx.invoked_subcommand is None:
        values = RackClient().get(f"/apps/{resolve_app(app)}")["parameters"]
        if values:
            info(sorted(values.items()))


@params.command(name="set")
@click.argument("pairs", nargs=-1, required=True, metavar="NAME=VALUE...")
@app_option
@click.pass_context
def params_set(ctx: click.Context, pairs: tuple[str, ...], app: str | None) -> None:
    """Set app parameters, e.g. `BuildTimeout=600` (empty value: the rack's default)."""
    app = subcommand_app(ctx, app)
    for pair in pairs:
        if "=" not in pair:
            raise click.BadParameter(f"{pair!r}: expected NAME=VALUE", param_hint="NAME=VALUE")
    client = RackClient()
    click.echo("Updating parameters... ", nl=False)
    values = dict(p.split("=", 1) for p in pairs)
    client.put(f"/apps/{app}", data={"parameters": urlencode(values)})
    click.echo("OK")

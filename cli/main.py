"""The `convox` command group."""

from __future__ import annotations

import click

import cli.exports  # noqa: F401  (adds `builds export` and `builds import`)
import cli.external  # noqa: F401  (adds `builds import-image`)
from cli import (
    logs,  # noqa: F401  (adds `builds logs` to the builds group)
    settings,
)
from cli.apps import apps
from cli.build import build, deploy
from cli.builds import builds
from cli.client import RackClient
from cli.env import env
from cli.events import rack_webhooks
from cli.output import info, table
from cli.releases import releases
from cli.settings import Endpoint, normalize_host
from cli.webhooks import webhooks  # also adds `apps webhook`
from rack import __version__  # rack/__init__.py alone: no domain module is loaded


@click.group()
@click.version_option(__version__, prog_name="convox")
def main() -> None:
    """Build and release apps on a rack."""


@main.command()
@click.argument("host")
@click.option("-n", "--name", help="the name to give this rack (default: the host as given)")
@click.option(
    "-p", "--password", "-t", "--token", "password", envvar="CONVOX_PASSWORD",
    help="the rack password (prompted when absent)",
)  # fmt: skip
def login(host: str, name: str | None, password: str | None) -> None:
    """Log in to a rack, remember it and make it the current one."""
    if password is None:
        password = click.prompt("Password", hide_input=True)
    RackClient(Endpoint(normalize_host(host), password)).get("/apps")
    settings.save_login(host, password, name=name)
    click.echo(f"Authenticating with {host}... OK")


@main.command()
def racks() -> None:
    """List the racks logged in to; `*` marks the current one."""
    known, now = settings.racks(), settings.current_name()
    if not known:
        raise click.ClickException("no racks yet: run `convox login <host> [--name NAME]`")
    table(["", "NAME", "URL"], [["*" if n == now else "", n, url] for n, url in sorted(known.items())])


@main.command()
@click.argument("name", required=False)
def switch(name: str | None) -> None:
    """Make a rack the current one (without NAME: show the current one)."""
    if name is None:
        click.echo(settings.current_name() or "no current rack: run `convox login <host>`")
        return
    settings.switch(name)
    click.echo(f"Switched to {name}")


@main.group(invoke_without_command=True)
@click.pass_context
def rack(ctx: click.Context) -> None:
    """Show the rack."""
    if ctx.invoked_subcommand is not None:
        return
    s = RackClient().get("/system")
    rows = [
        ("Name", s["name"]),
        ("Provider", s["provider"]),
        ("Status", s["status"]),
        ("Version", s["version"]),
    ]
    if builder := (s.get("parameters") or {}).get("Builder"):
        rows.append(("Builder", builder))
    info(rows)


rack.add_command(rack_webhooks)


for command in (apps, build, deploy, builds, releases, env, webhooks):
    main.add_command(command)
for name, command in main.commands.items():
    if name not in ("login", "racks", "switch"):
        settings.add_rack_option(command)

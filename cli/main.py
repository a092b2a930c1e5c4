"""The `convox` command group."""

from __future__ import annotations

import click

import cli.exports  # noqa: F401  (adds `builds export` and `builds import`)
from cli import logs  # noqa: F401  (adds `builds logs` to the builds group)
from cli.apps import apps
from cli.build import build, deploy
from cli.builds import builds
from cli.client import RackClient
from cli.env import env
from cli.output import info
from cli.releases import releases
from cli.settings import Endpoint, normalize_host, save_login
from cli.webhooks import webhooks  # also adds `apps webhook`


@click.group()
@click.version_option("3.0.0", prog_name="convox")
def main() -> None:
    """Build and release apps on a rack."""


@main.command()
@click.argument("host")
@click.option("-p", "--password", envvar="CONVOX_PASSWORD", help="the rack password (prompted when absent)")
def login(host: str, password: str | None) -> None:
    """Log in to a rack and remember it."""
    url = normalize_host(host)
    if password is None:
        password = click.prompt("Password", hide_input=True)
    RackClient(Endpoint(url, password)).get("/apps")
    save_login(url, password)
    click.echo(f"Authenticating with {host}... OK")


@main.command()
def rack() -> None:
    """Show the rack."""
    s = RackClient().get("/system")
    info(
        [("Name", s["name"]), ("Provider", s["provider"]), ("Status", s["status"]), ("Version", s["version"])]
    )


for command in (apps, build, deploy, builds, releases, env, webhooks):
    main.add_command(command)

"""The `convox` command group."""

from __future__ import annotations

import click

from cli.apps import apps
from cli.client import RackClient
from cli.output import info
from cli.settings import Endpoint, normalize_host, save_login


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


main.add_command(apps)

from cli.build import build, deploy  # noqa: E402
from cli.builds import builds  # noqa: E402
from cli.env import env  # noqa: E402
from cli.releases import releases  # noqa: E402

main.add_command(build)
main.add_command(deploy)
main.add_command(builds)
main.add_command(releases)
main.add_command(env)

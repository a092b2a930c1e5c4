"""`convox releases`, `releases info`, `releases manifest`, `releases promote`, `releases rollback`."""

from __future__ import annotations

import click

from cli.appname import app_option, resolve_app, subcommand_app
from cli.client import RackClient
from cli.output import ago, info, table


@click.group(invoke_without_command=True)
@app_option
@click.option("-l", "--limit", type=click.IntRange(1, 1000), default=10, show_default=True)
@click.pass_context
def releases(ctx: click.Context, app: str | None, limit: int) -> None:
    """List an app's releases, newest first."""
    ctx.ensure_object(dict)["app"] = app
    if ctx.invoked_subcommand is not None:
        return
    app = resolve_app(app)
    client = RackClient()
    active = client.get(f"/apps/{app}")["release"]
    rows = client.get(f"/apps/{app}/releases", params={"limit": limit})
    table(
        ["ID", "STATUS", "BUILD", "CREATED", "DESCRIPTION"],
        [
            [r["id"], "active" if r["id"] == active else "", r["build"], ago(r["created"]), r["description"]]
            for r in rows
        ],
    )


def mask_env(env: str) -> str:
    """Hide the values of `KEY=VALUE` lines."""
    return "\n".join(line.partition("=")[0] + "=****" for line in env.splitlines() if line)


@releases.command(name="info")
@click.argument("release_id", metavar="ID")
@app_option
@click.option("--reveal", is_flag=True, help="show environment values on a terminal too")
@click.pass_context
def release_info(ctx: click.Context, release_id: str, app: str | None, reveal: bool) -> None:
    """Show a release."""
    r = RackClient().get(f"/apps/{subcommand_app(ctx, app)}/releases/{release_id}")
    env = r["env"] or ""
    if not reveal and click.get_text_stream("stdout").isatty():
        env = mask_env(env)
    rows = [
        ("Id", r["id"]),
        ("Build", r["build"]),
        ("Created", r["created"]),
        ("Description", r["description"]),
    ]
    indent = " " * (max(len(k) for k, _ in rows) + 2)
    rows.append(("Env", ("\n" + indent).join(env.splitlines())))
    info(rows)


@releases.command()
@click.argument("release_id", metavar="ID")
@app_option
@click.pass_context
def manifest(ctx: click.Context, release_id: str, app: str | None) -> None:
    """Print a release's manifest."""
    r = RackClient().get(f"/apps/{subcommand_app(ctx, app)}/releases/{release_id}")
    click.echo(r["manifest"], nl=not r["manifest"].endswith("\n"))


@releases.command()
@click.argument("release_id", metavar="[ID]", required=False)
@app_option
@click.option("--force", is_flag=True, help="accepted for compatibility: promotion never waits on a rollout")
@click.pass_context
def promote(ctx: click.Context, release_id: str | None, app: str | None, force: bool) -> None:
    """Make a release active (the newest when no ID is given)."""
    app = subcommand_app(ctx, app)
    client = RackClient()
    if not release_id:
        newest = client.get(f"/apps/{app}/releases", params={"limit": 1})
        if not newest:
            raise click.ClickException(f"app {app} has no releases: run `convox build` first")
        release_id = newest[0]["id"]
    click.echo(f"Promoting {release_id}... ", nl=False)
    client.post(f"/apps/{app}/releases/{release_id}/promote", expect_json=False)
    click.echo("OK")


@releases.command()
@click.argument("release_id", metavar="ID")
@app_option
@click.option("--force", is_flag=True, help="accepted for compatibility: promotion never waits on a rollout")
@click.option("--id", "id_only", is_flag=True, help="progress on stderr, only the new release id on stdout")
@click.pass_context
def rollback(ctx: click.Context, release_id: str, app: str | None, force: bool, id_only: bool) -> None:
    """Create a release with an old one's build and env, and promote it."""
    app = subcommand_app(ctx, app)
    click.echo(f"Rolling back to {release_id}... ", nl=False, err=id_only)
    new = RackClient().post(f"/apps/{app}/releases/{release_id}/rollback")
    click.echo(f"OK, {new['id']}", err=id_only)
    if id_only:
        click.echo(new["id"], nl=False)

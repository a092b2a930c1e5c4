"""`convox env`, `env get`, `env set`, `env unset`: each change is a new release, as in Convox."""

from __future__ import annotations

import click

from cli.appname import app_option, resolve_app, subcommand_app
from cli.client import RackClient


def parse_env(text: str) -> dict[str, str]:
    """Read the rack's `KEY=VALUE` lines; a value is everything after the first `=`."""
    env = {}
    for line in (text or "").split("\n"):
        if line:
            key, _, value = line.partition("=")
            env[key] = value
    return env


def format_env(env: dict[str, str]) -> str:
    return "\n".join(f"{key}={value}" for key, value in sorted(env.items()))


def parse_assignment(item: str) -> tuple[str, str]:
    """Split `KEY=VALUE` on the first `=`, refusing what the rack's line format cannot carry."""
    key, sep, value = item.partition("=")
    if not sep or not key:
        raise click.BadParameter(f"{item!r}: expected KEY=VALUE")
    if key != key.strip() or any(c.isspace() for c in key):
        raise click.BadParameter(f"{item!r}: the name {key!r} must not contain spaces")
    if value.splitlines() not in ([], [value]):
        raise click.BadParameter(f"{key}: values cannot contain line breaks")
    return key, value


def latest_env(client: RackClient, app: str) -> dict[str, str]:
    newest = client.get(f"/apps/{app}/releases", params={"limit": 1})
    return parse_env(newest[0]["env"]) if newest else {}


@click.group(invoke_without_command=True)
@app_option
@click.pass_context
def env(ctx: click.Context, app: str | None) -> None:
    """Print the app's environment as KEY=VALUE lines."""
    ctx.ensure_object(dict)["app"] = app
    if ctx.invoked_subcommand is None:
        for key, value in sorted(latest_env(RackClient(), resolve_app(app)).items()):
            click.echo(f"{key}={value}")


@env.command()
@click.argument("key")
@app_option
@click.pass_context
def get(ctx: click.Context, key: str, app: str | None) -> None:
    """Print one environment variable's value."""
    current = latest_env(RackClient(), subcommand_app(ctx, app))
    if key not in current:
        raise click.ClickException(f"env not found: {key}")
    click.echo(current[key])


def _release(client: RackClient, app: str, new_env: dict[str, str], *, promote: bool, id_only: bool) -> None:
    """Create the release that carries `new_env`, print it, and promote it if asked."""
    release = client.post(f"/apps/{app}/releases", data={"env": format_env(new_env)})
    click.echo("OK", err=id_only)
    click.echo(f"Release: {release['id']}", err=id_only)
    if promote:
        click.echo(f"Promoting {release['id']}... ", nl=False, err=id_only)
        client.post(f"/apps/{app}/releases/{release['id']}/promote", expect_json=False)
        click.echo("OK", err=id_only)
    if id_only:
        click.echo(release["id"], nl=False)


def release_options(fn):
    """Attach the flags shared by the commands that create a release."""
    fn = click.option(
        "--id", "id_only", is_flag=True, help="progress on stderr, only the release id on stdout"
    )(fn)
    return click.option("-p", "--promote", is_flag=True, help="promote the new release")(fn)


@env.command(name="set")
@click.argument("pairs", nargs=-1, metavar="KEY=VALUE...")
@app_option
@release_options
@click.option("--replace", is_flag=True, help="replace the whole environment with these variables")
@click.pass_context
def set_(ctx: click.Context, pairs: tuple[str, ...], app: str | None, replace: bool, **kw) -> None:
    """Set environment variables in a new release (KEY=VALUE lines on stdin when no arguments)."""
    if not pairs and not click.get_text_stream("stdin").isatty():
        text = click.get_text_stream("stdin").read()
        pairs = tuple(line for line in text.splitlines() if line.strip() and not line.startswith("#"))
    changes = dict(parse_assignment(p) for p in pairs)
    if not changes and not replace:
        raise click.UsageError("nothing to set: give KEY=VALUE arguments")
    app = subcommand_app(ctx, app)
    client = RackClient()
    click.echo(f"Setting {', '.join(sorted(changes))}... ", nl=False, err=kw["id_only"])
    new_env = {} if replace else latest_env(client, app)
    new_env.update(changes)
    _release(client, app, new_env, **kw)


@env.command()
@click.argument("keys", nargs=-1, required=True, metavar="KEY...")
@app_option
@release_options
@click.pass_context
def unset(ctx: click.Context, keys: tuple[str, ...], app: str | None, **kw) -> None:
    """Remove environment variables in a new release."""
    app = subcommand_app(ctx, app)
    client = RackClient()
    click.echo(f"Unsetting {', '.join(sorted(set(keys)))}... ", nl=False, err=kw["id_only"])
    new_env = latest_env(client, app)
    missing = [k for k in keys if k not in new_env]
    if missing:
        raise click.ClickException(f"env not found: {', '.join(missing)}")
    for key in keys:
        new_env.pop(key, None)
    _release(client, app, new_env, **kw)

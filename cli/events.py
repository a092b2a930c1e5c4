"""`convox rack webhooks`: URLs the rack POSTs its events to (build and release events), signed."""

from __future__ import annotations

import click

from cli.client import RackClient
from cli.output import table

app_option = click.option("-a", "--app", help="only this app's events (default: every app's)")


@click.group(name="webhooks", invoke_without_command=True)
@app_option
@click.pass_context
def rack_webhooks(ctx: click.Context, app: str | None) -> None:
    """List the URLs the rack sends its events to."""
    ctx.obj = {**(ctx.obj or {}), "app": app}
    if ctx.invoked_subcommand is None:
        rows = RackClient().get("/events/webhooks", params={"app": app} if app else None)
        table(["ID", "APP", "URL"], [[r["id"], r["app"] or "*", r["url"]] for r in rows])


@rack_webhooks.command()
@click.argument("url")
@app_option
@click.pass_context
def add(ctx: click.Context, url: str, app: str | None) -> None:
    """POST the rack's events (or one app's) to URL, signed with a new secret (shown once)."""
    app = app or (ctx.obj or {}).get("app")
    client = RackClient()
    click.echo("Adding webhook... ", nl=False)
    hook = client.post("/events/webhooks", data={"url": url, **({"app": app} if app else {})})
    click.echo(f"OK, {hook['id']}")
    click.echo(f'Secret: {hook["secret"]}  (verify Convox-Signature: t=…,v1=HMAC-SHA256 of "t.body")')


@rack_webhooks.command()
@click.argument("hook_id", metavar="ID")
@app_option
@click.pass_context
def remove(ctx: click.Context, hook_id: str, app: str | None) -> None:
    """Stop sending events to a webhook."""
    app = app or (ctx.obj or {}).get("app")
    client = RackClient()
    click.echo(f"Removing {hook_id}... ", nl=False)
    client.delete(f"/events/webhooks/{hook_id}", params={"app": app} if app else None)
    click.echo("OK")

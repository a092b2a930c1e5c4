"""`convox webhooks add|list|delete` (and `convox apps webhook`): build an app on each push to a branch."""

from __future__ import annotations

import click

from cli.apps import apps
from cli.client import RackClient
from cli.output import info, table


@click.group()
def webhooks() -> None:
    """Build an app on every push to a git branch."""


@webhooks.command()
@click.argument("app")
@click.option("--repo", required=True, help="the git URL to clone, like https://github.com/org/app.git")
@click.option("--branch", default="main", show_default=True, help="the branch whose pushes are built")
@click.option("--promote", is_flag=True, help="promote each release when its build completes")
def add(app: str, repo: str, branch: str, promote: bool) -> None:
    """Add a push webhook to an app and show its delivery URL and secret."""
    client = RackClient()
    click.echo(f"Adding webhook to {app}... ", nl=False)
    data = {"repo": repo, "branch": branch, **({"promote": "true"} if promote else {})}
    hook = client.post(f"/apps/{app}/webhooks", data=data)
    click.echo("OK")
    info(
        [
            ("Id", hook["id"]),
            ("Url", client.url(hook["url"])),
            ("Secret", hook["secret"]),
            ("Repo", hook["repo"]),
            ("Branch", hook["branch"]),
            ("Promote", "yes" if hook["promote"] else "no"),
        ]
    )
    click.echo(
        "The secret is shown only now: set it as the webhook's secret (GitHub: content type"
        " application/json, push events; GitLab: secret token)."
    )


@webhooks.command(name="list")
@click.argument("app")
def list_(app: str) -> None:
    """List an app's push webhooks."""
    client = RackClient()
    rows = client.get(f"/apps/{app}/webhooks")
    table(
        ["ID", "BRANCH", "PROMOTE", "REPO", "URL"],
        [
            [h["id"], h["branch"], "yes" if h["promote"] else "no", h["repo"], client.url(h["url"])]
            for h in rows
        ],
    )


@webhooks.command()
@click.argument("app")
@click.argument("webhook_id", metavar="ID")
def delete(app: str, webhook_id: str) -> None:
    """Delete a push webhook."""
    client = RackClient()
    click.echo(f"Deleting webhook {webhook_id}... ", nl=False)
    client.delete(f"/apps/{app}/webhooks/{webhook_id}")
    click.echo("OK")


apps.add_command(add, name="webhook")

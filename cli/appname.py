"""Which app a command is about: `-a/--app`, then `.convox/app`, then the folder's name."""

from __future__ import annotations

import os
from pathlib import Path

import click

app_option = click.option("-a", "--app", help="the app (default: .convox/app, then the folder's name)")


def resolve_app(app: str | None, folder: str | os.PathLike = ".") -> str:
    """Return the app named by the flag, the folder's `.convox/app` file, or the folder's own name."""
    if app:
        return app
    local = Path(folder) / ".convox" / "app"
    if local.is_file():
        name = local.read_text(encoding="utf-8").strip()
        if name:
            return name
    return Path(os.path.realpath(folder)).name


def subcommand_app(ctx: click.Context, app: str | None) -> str:
    """Return the subcommand's `-a`, else its group's `-a`, else the default app."""
    return resolve_app(app or (ctx.obj or {}).get("app"))

"""`rack` operator commands: `rack migrate`, `rack reasons`."""

from __future__ import annotations

import click

from rack.config import load_settings
from rack.db import Database
from rack.migrate import NoMigrations
from rack.migrate import migrate as apply_migrations


@click.group()
def main() -> None:
    """Operate a rack."""


@main.command()
def migrate() -> None:
    """Apply pending database migrations (safe to run from several processes at once)."""
    settings = load_settings()
    db = Database(settings.database_url)
    try:
        done = apply_migrations(db)
    except NoMigrations as exc:
        raise click.ClickException(exc.message) from None
    finally:
        db.close()
    click.echo(f"applied {len(done)} migration(s)" + (f": {', '.join(done)}" if done else ""))


@main.command()
def reasons() -> None:
    """Print every failure reason code as the README's Markdown table."""
    from rack.reasons import table

    click.echo(table(), nl=False)


if __name__ == "__main__":
    main()

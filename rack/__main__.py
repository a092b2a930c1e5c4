"""`rack` operator commands: `rack migrate`, `rack reap`."""

from __future__ import annotations

import click

from rack.config import load_settings
from rack.db import Database
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
    finally:
        db.close()
    click.echo(f"applied {len(done)} migration(s)" + (f": {', '.join(done)}" if done else ""))


if __name__ == "__main__":
    main()

"""`python -m rack_stack up|down|status|env|next-steps`: run a local rack on this machine."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import click

from rack_stack.app import CHECKOUT, venv_bin
from rack_stack.procs import StartError
from rack_stack.stack import APP_SERVICES, DEFAULT_PORTS, SERVICES, Stack

PORT_VARIABLES = {
    "postgres": "RACK_PG_PORT",
    "redis": "RACK_REDIS_PORT",
    "registry": "RACK_REGISTRY_PORT",
    "api": "RACK_API_PORT",
}


def local_stack(home: str | None, *, port_variables: bool = True) -> Stack:
    """Return the stack in `home`, $RACK_HOME or `<checkout>/.rack`.

    Ports come from $RACK_*_PORT (unless `port_variables` is false), else from the stack's ports.json,
    else DEFAULT_PORTS.
    """
    folder = Path(home or os.environ.get("RACK_HOME") or CHECKOUT / ".rack")
    variables = PORT_VARIABLES if port_variables else {}
    ports = {key: int(os.environ[var]) for key, var in variables.items() if os.environ.get(var)}
    try:
        return Stack(folder, ports, default_ports=DEFAULT_PORTS)
    except (StartError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None


home_option = click.option("--home", type=click.Path(file_okay=False), help="State folder [default: .rack]")


@click.group()
def main() -> None:
    """Run the rack and the services it needs on loopback."""


@main.command()
@home_option
@click.option("--services-only", is_flag=True, help="Start Postgres, Redis, dockerd and the registry only.")
def up(home: str | None, services_only: bool) -> None:
    """Start whatever is not running yet and print how to use it."""
    stack = local_stack(home)
    names = SERVICES if services_only else (*SERVICES, *APP_SERVICES)
    began = time.monotonic()
    try:
        started = stack.start(SERVICES)
        stack.seed_base_image()
        env_file = stack.write_env_file()
        if not services_only:
            started.update(stack.start(APP_SERVICES))
    except StartError as exc:
        raise click.ClickException(
            f"{exc}\n(see `python -m rack_stack status --home {stack.home}`)"
        ) from None
    for name in names:
        service = stack.services[name]
        word = "started" if started[name] else "already up"
        click.echo(f"{name:<9} {word:<10} pid {service.pid():<7} {service.address}")
    click.echo(f"ready in {time.monotonic() - began:.1f}s; state in {stack.home}; settings: . {env_file}")
    if not services_only:
        _next_steps(stack)


def _next_steps(stack: Stack) -> None:
    """The exact lines to paste to use the rack from a shell, and three commands to try."""
    api = f"127.0.0.1:{stack.ports['api']}"
    click.echo(
        "\nUse this rack from your shell (`convox` lives in the checkout's .venv/bin):\n"
        f'    export PATH="{venv_bin()}:$PATH"\n'
        f"    export RACK_URL=http://convox:{stack.password}@{api}\n"
        f"  or remember it as a named rack: convox login {api} --name local  (password: {stack.password})\n"
        "Then try:\n"
        "    convox apps create myapp\n"
        f"    convox deploy {CHECKOUT / 'examples' / 'myapp'} -a myapp\n"
        "    convox builds -a myapp"
    )


@main.command(name="next-steps")
@home_option
def next_steps(home: str | None) -> None:
    """Print the lines to paste to use the local rack, and commands to try."""
    _next_steps(local_stack(home))


@main.command()
@home_option
def down(home: str | None) -> None:
    """Stop the API, the worker and the services."""
    stack = local_stack(home, port_variables=False)  # whatever ports it runs on
    for name, was_running in stack.stop().items():
        click.echo(f"{name:<9} {'stopped' if was_running else 'not running'}")


@main.command()
@home_option
def status(home: str | None) -> None:
    """Show what runs; exit 1 if a service (not counting the API and worker) is down."""
    stack = local_stack(home)
    report = stack.status()
    for name, state in report.items():
        word = "up" if state["up"] else ("not answering" if state["pid"] else "down")
        click.echo(f"{name:<9} {word:<14} pid {state['pid'] or '-':<7} {state['address']}")
    sys.exit(0 if all(report[name]["up"] for name in SERVICES) else 1)


@main.command()
@home_option
def env(home: str | None) -> None:
    """Print the RACK_* settings as shell `export` lines."""
    click.echo(local_stack(home).write_env_file().read_text(), nl=False)

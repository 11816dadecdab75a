"""The `ragtrace` command: operate the local stack (`ragtrace stack up|down|status`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from ragtrace.devstack import LocalStack, StartError, State, Status

app = typer.Typer(help="ragtrace: event-driven RAG with one trace per document and question.", no_args_is_help=True)
stack_app = typer.Typer(help="The local stack of real servers and ragtrace services.", no_args_is_help=True)
app.add_typer(stack_app, name="stack")
console = Console()

StateDir = Annotated[Path | None, typer.Option(help="State directory (default: $RAGTRACE_STATE_DIR or ./.state)")]

_STYLE = {State.UP: "green", State.DOWN: "red", State.UNHEALTHY: "yellow"}


def _print_status(statuses: list[Status]) -> None:
    table = Table("component", "state", "port", "pid", "log")
    for s in statuses:
        table.add_row(s.name, f"[{_STYLE[s.state]}]{s.state}[/]", str(s.port), str(s.pid or "-"), str(s.log))
    console.print(table)


@stack_app.command()
def up(state_dir: StateDir = None) -> None:
    """Start every component that is not running yet and wait until each is ready."""
    stack = LocalStack(state_dir)
    try:
        with console.status("starting the local stack"):
            statuses = stack.up()
    except StartError as error:
        console.print(f"[red]start failed:[/] {error}")
        raise typer.Exit(1) from error
    _print_status(statuses)
    endpoints = Table("endpoint", "address", box=None)
    for name, address in stack.endpoints():
        endpoints.add_row(name, address)
    console.print(endpoints)
    console.print(
        f"Settings and the API key ($RAGTRACE_API_KEY): [bold]{stack.env_file}[/]  (set -a; . {stack.env_file}; set +a)"
    )


@stack_app.command()
def down(state_dir: StateDir = None) -> None:
    """Stop exactly the processes this stack started."""
    stopped = LocalStack(state_dir).down()
    console.print(f"stopped: {', '.join(stopped) if stopped else 'nothing was running'}")


@stack_app.command()
def status(
    state_dir: StateDir = None,
    check: Annotated[bool, typer.Option(help="Exit 1 unless every component is up")] = False,
) -> None:
    """Show each component: up, down or unhealthy, its port, pid and log."""
    statuses = LocalStack(state_dir).status()
    _print_status(statuses)
    if check and any(s.state is not State.UP for s in statuses):
        raise typer.Exit(1)

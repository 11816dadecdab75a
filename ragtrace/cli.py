"""The `ragtrace` command: operate the local stack (`ragtrace stack up|down|status`)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from ragtrace.devstack import LocalStack, StartError, State, Status, default_state_dir
from ragtrace.devstack.servers import REPO_ROOT

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


def _stack_setting(name: str) -> str:
    """A setting from the environment, else from the local stack's .state/stack.env."""
    if os.environ.get(name):
        return os.environ[name]
    env_file = default_state_dir() / "stack.env"
    values = dict(line.split("=", 1) for line in env_file.read_text().splitlines()) if env_file.exists() else {}
    if name not in values:
        raise typer.BadParameter(f"{name} is not set and {env_file} does not have it: run `make up` first")
    return values[name]


@app.command("eval")
def evaluate(
    data: Annotated[Path, typer.Option(help="BEIR-format folder")] = REPO_ROOT.parent
    / "shared"
    / "data"
    / "eval"
    / "msmarco-5k",
    namespace: Annotated[str, typer.Option(help="Namespace to ingest the corpus into")] = "eval-msmarco",
    alphas: Annotated[str, typer.Option(help="Hybrid alphas to measure, comma-separated")] = "0.3,0.5,0.7,0.8",
    output: Annotated[Path, typer.Option(help="Where to write the results")] = REPO_ROOT
    / "bench"
    / "results"
    / "eval-msmarco-5k.json",
) -> None:
    """nDCG@10 of each search mode through the running system's HTTP API, next to BM25 and dense baselines."""
    from ragtrace.evaluation import run

    run(
        data,
        _stack_setting("RAGTRACE_INGEST_URL"),
        _stack_setting("RAGTRACE_SEARCH_URL"),
        _stack_setting("RAGTRACE_API_KEY"),
        namespace,
        [float(a) for a in alphas.split(",")],
        output,
    )


@app.command()
def bench(
    data: Annotated[Path, typer.Option(help="BEIR-format folder whose passages are ingested")] = REPO_ROOT.parent
    / "shared"
    / "data"
    / "eval"
    / "msmarco-5k",
    documents: Annotated[int, typer.Option(help="Passages for the indexing measurement")] = 1000,
    output: Annotated[Path, typer.Option(help="Folder for the results")] = REPO_ROOT / "bench" / "results",
) -> None:
    """Indexing throughput against the bare model, freshness, search latency and memory of the running stack."""
    from ragtrace.bench import run

    stack = LocalStack()
    pids = {s.name: s.pid for s in stack.status() if s.pid is not None}
    run(
        data,
        _stack_setting("RAGTRACE_INGEST_URL"),
        _stack_setting("RAGTRACE_SEARCH_URL"),
        _stack_setting("RAGTRACE_API_KEY"),
        pids,
        stack.state_dir / "index",
        documents,
        output,
    )

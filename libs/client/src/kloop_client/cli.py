"""The `kloop` command: run the local platform and talk to its services."""

from __future__ import annotations

import shutil
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from typing import Annotated

import httpx
import redis
import typer
from rich.console import Console
from rich.table import Table

from kloop_client.docs_cli import docs_app
from kloop_client.import_cli import import_model
from kloop_client.keys_cli import keys_app
from kloop_client.local import LocalPlatformError, http_ok, recorded_processes
from kloop_client.platform import (
    Endpoints,
    LocalPlatformSettings,
    current_endpoints,
    local_api_key,
    platform_down,
    platform_up,
    services,
)
from kloop_client.sdk import GatewayClient, KloopClient, KloopError, PipelineAudit, RagClient

app = typer.Typer(help="kloop: the production ML loop.", no_args_is_help=True)
models_app = typer.Typer(help="Registered models and versions.", no_args_is_help=True)
alias_app = typer.Typer(help="Set or delete an alias (no gate).", no_args_is_help=True)
app.add_typer(models_app, name="models")
app.add_typer(alias_app, name="alias")
app.add_typer(keys_app, name="keys")
app.add_typer(docs_app, name="docs")
models_app.command("import")(import_model)
console = Console()
err = Console(stderr=True)

ModelArg = Annotated[str, typer.Argument(help="Registered model name.")]


def _settings() -> LocalPlatformSettings:
    return LocalPlatformSettings()


def _endpoints() -> Endpoints:
    return current_endpoints(_settings())


@contextmanager
def _client() -> Iterator[KloopClient]:
    ep = _endpoints()
    client = KloopClient(ep.training_addr, ep.registry_addr)
    try:
        yield client
    except KloopError as e:
        err.print(f"[red]error[/] {e.code}: {e.message}")
        if e.code == "UNAVAILABLE":
            err.print("is the platform up? try: kloop up")
        raise typer.Exit(1) from None
    finally:
        client.close()


@app.command()
def up(
    fresh: Annotated[
        bool, typer.Option(help="Stop the platform and delete its state (models, runs) first.")
    ] = False,
) -> None:
    """Start Redis, MLflow and every service as local processes; wait until ready."""
    s = _settings()
    if fresh:
        platform_down(s)
        shutil.rmtree(s.home.resolve(), ignore_errors=True)
    try:
        ep = platform_up(s, log=lambda m: console.print(f"[dim]·[/] {m}"))
    except LocalPlatformError as e:
        err.print(f"[red]kloop up failed[/]: {e}")
        raise typer.Exit(1) from None
    _print_endpoints(ep)


@app.command()
def down() -> None:
    """Stop every process of the local platform (whole process groups)."""
    stopped = platform_down(_settings())
    console.print(f"stopped: {', '.join(stopped) if stopped else 'nothing was running'}")


@app.command()
def status() -> None:
    """Show each local process: running or not, ready or not, where."""
    s = _settings()
    home = s.home.resolve()
    ep = _endpoints()
    procs = {p.name: p for p in recorded_processes(home)}
    specs = {svc.name: svc for svc in services(s, ep)}
    probes: dict[str, Callable[[], bool]] = {
        "redis": lambda: True,  # alive is ready
        "mlflow": partial(http_ok, f"{ep.mlflow_url}/health"),
        **{name: svc.ready() for name, svc in specs.items()},
    }
    table = Table("process", "pid", "state", "log")
    healthy = bool(procs)
    for name, ready in probes.items():
        p = procs.get(name)
        svc = specs.get(name)
        if p is None or not p.alive():
            state, healthy = "[red]stopped[/]", False
        elif not ready():
            state, healthy = "[yellow]not ready[/]", False
        elif (
            svc is not None
            and svc.ready_path == "/livez"
            and not http_ok(f"http://127.0.0.1:{svc.http_port}/readyz")
        ):
            # Inference (and the gateway in front of it) are ready once a production
            # model is loaded; before that, being live is all `kloop up` promises.
            state = "[yellow]live, no production model yet[/]"
        else:
            state = "[green]ready[/]"
        table.add_row(name, str(p.pid) if p else "-", state, str(p.log_path) if p else "-")
    console.print(table)
    if healthy:
        _print_endpoints(ep)
    raise typer.Exit(0 if healthy else 1)


def _print_endpoints(ep: Endpoints) -> None:
    table = Table("endpoint", "address", title="kloop is up")
    table.add_row("MLflow UI", ep.mlflow_url)
    table.add_row("Redis", ep.redis_url)
    table.add_row("registry gRPC", ep.registry_addr)
    table.add_row("training gRPC", ep.training_addr)
    table.add_row("gateway HTTP (docs)", f"{ep.gateway_http}/docs")
    table.add_row("gateway gRPC", ep.gateway_addr)
    table.add_row("inference OIP HTTP / gRPC", f"{ep.inference_http}/v2  {ep.inference_addr}")
    table.add_row("drift monitor", f"{ep.drift_monitor_http}/v1/status")
    table.add_row("rag (ask)", f"{ep.rag_http}/docs")
    table.add_row("vector store gRPC", ep.vectorstore_addr)
    table.add_row("registry /metrics", f"{ep.registry_http}/metrics")
    table.add_row("training /metrics", f"{ep.training_http}/metrics")
    console.print(table)


@app.command()
def demo(
    model: Annotated[str, typer.Option(help="Model name to use.")] = "sentiment",
) -> None:
    """Run the loop end to end on the running platform and narrate it."""
    from kloop_client.demo import Demo

    s = _settings()
    with _client() as client, _gateway() as gateway:
        Demo(client, gateway, _endpoints(), s.home.resolve(), console).run(model)


@app.command()
def train(
    model: Annotated[str, typer.Option(help="Model name to register under.")] = "sentiment",
    dataset: Annotated[
        str | None, typer.Option(help="CSV or JSONL (text,label); default: built-in.")
    ] = None,
    seed: Annotated[int | None, typer.Option(help="Random seed (default: the service's).")] = None,
    epochs: Annotated[int | None, typer.Option(help="Epochs (default: the service's).")] = None,
) -> None:
    """Train a model version and follow the run to the end."""
    with _client() as client:
        run = client.train(
            model,
            dataset_uri=dataset,
            params={k: v for k, v in {"seed": seed, "epochs": epochs}.items() if v is not None},
            on_event=lambda e: console.print(f"{e.progress * 100:5.1f}% {e.stage} {e.message}"),
        )
        if run.model_version:
            console.print(f"version {run.model_version}: {dict(run.metrics)}")
        else:
            err.print(f"[red]run failed[/]: {run.error}")
            raise typer.Exit(1)


def _api_key() -> str:
    return local_api_key(_settings())


@contextmanager
def _gateway() -> Iterator[GatewayClient]:
    ep = _endpoints()
    client = GatewayClient(ep.gateway_http, ep.gateway_addr, _api_key())
    try:
        yield client
    except KloopError as e:
        err.print(f"[red]error[/] {e.code}: {e.message}")
        raise typer.Exit(1) from None
    except httpx.HTTPError as e:
        err.print(f"[red]error[/] gateway unreachable at {ep.gateway_http}: {e}")
        raise typer.Exit(1) from None
    finally:
        client.close()


@app.command()
def predict(
    text: Annotated[str, typer.Argument(help="The text to classify.")],
    model: Annotated[str, typer.Option(help="Registered model name.")] = "sentiment",
    grpc_: Annotated[bool, typer.Option("--grpc", help="Use the gateway's gRPC API.")] = False,
) -> None:
    """Classify a text through the gateway (API key: KLOOP_API_KEY or the local one)."""
    with _gateway() as gw:
        if grpc_:
            p = gw.predict_grpc(model, text)
            console.print(
                f"{p.label} (score {p.score:.4f}) by {p.model.name} v{p.model.version} "
                f"\\[{p.model.alias}] id {p.id}"
            )
        else:
            body, cached = gw.predict_http(model, text)
            m = body["model"]
            console.print(
                f"{body['label']} (score {body['score']:.4f}) by {m['name']} v{m['version']} "
                f"\\[{m['alias']}]{' (cache hit)' if cached else ''} id {body['id']}"
            )


@app.command()
def ask(
    question: Annotated[str, typer.Argument(help="A question about the ingested documents.")],
    collection: Annotated[str, typer.Option(help="The document collection.")] = "docs",
    k: Annotated[int, typer.Option(help="Chunks to retrieve.")] = 5,
) -> None:
    """Ask the RAG service; the answer cites the chunks it came from (kloop docs add)."""
    ep = _endpoints()
    try:
        with RagClient(ep.rag_http, _api_key()) as rag:
            body = rag.ask(question, collection, k)
    except KloopError as e:
        err.print(f"[red]error[/] {e.code}: {e.message}")
        raise typer.Exit(1) from None
    except httpx.HTTPError as e:
        err.print(f"[red]error[/] rag service unreachable at {ep.rag_http}: {e}")
        raise typer.Exit(1) from None
    console.print(body["answer"])
    label = (
        "extractive (no LLM: the best-matching sentences)"
        if body["mode"] == "extractive"
        else f"generative ({body['model']})"
    )
    console.print(f"[dim]{label}{', from the answer cache' if body.get('cached') else ''}[/]")
    table = Table("ref", "source", "chunk", "score")
    for c in body["citations"]:
        table.add_row(f"[{c['ref']}]", c["source"], str(c["chunk"]), f"{c['score']:.3f}")
    console.print(table)


@models_app.command("list")
def models_list() -> None:
    """List registered models and their aliases."""
    with _client() as client:
        table = Table("model", "latest", "aliases")
        for m in client.list_models():
            aliases = ", ".join(f"{a}→v{v}" for a, v in sorted(m.aliases.items()))
            table.add_row(m.name, m.latest_version, aliases)
        console.print(table)


@models_app.command("versions")
def models_versions(model: ModelArg) -> None:
    """List a model's versions with aliases, metrics and digests."""
    with _client() as client:
        table = Table("version", "aliases", "accuracy", "log_loss", "sha256", "run")
        for v in client.list_versions(model):
            m = dict(v.metrics)
            table.add_row(
                v.version,
                ",".join(v.aliases),
                f"{m.get('accuracy', float('nan')):.3f}",
                f"{m.get('log_loss', float('nan')):.3f}",
                v.sha256[:12],
                v.run_id[:12],
            )
        console.print(table)


@models_app.command("resolve")
def models_resolve(model: ModelArg, alias: str = "production") -> None:
    """Which version an alias points at."""
    with _client() as client:
        v = client.resolve(model, alias)
        console.print(f"{model}@{alias} → v{v.version} (sha256 {v.sha256})")


@app.command()
def promote(
    model: ModelArg,
    version: str,
    to: Annotated[str, typer.Option(help="Alias to move if approved.")] = "production",
    baseline: Annotated[str, typer.Option(help="Alias to compare against.")] = "production",
    reason: str = "",
    dry_run: bool = False,
) -> None:
    """Run the promotion gate; move the alias only if the candidate wins."""
    with _client() as client:
        d = client.promote(
            model, version, target=to, baseline=baseline, reason=reason, dry_run=dry_run
        )
        console.print(("APPROVED" if d.approved else "REJECTED") + f": {d.explanation}")
        raise typer.Exit(0 if d.approved else 3)


@alias_app.command("set")
def alias_set(model: ModelArg, alias: str, version: str, reason: str = "") -> None:
    """Point an alias at a version."""
    with _client() as client:
        c = client.set_alias(model, alias, version, reason)
        console.print(f"{model}@{alias}: v{c.previous_version or '-'} → v{c.version}")


@alias_app.command("delete")
def alias_delete(model: ModelArg, alias: str, reason: str = "") -> None:
    """Remove an alias."""
    with _client() as client:
        c = client.delete_alias(model, alias, reason)
        console.print(f"{model}@{alias}: v{c.previous_version or '-'} → (none)")


@app.command()
def rollback(model: ModelArg, alias: str = "production", reason: str = "") -> None:
    """Move an alias back to the version it pointed at before its last change."""
    with _client() as client:
        c = client.rollback(model, alias, reason)
        console.print(f"{model}@{alias}: v{c.previous_version} → v{c.version}")


@app.command()
def history(model: ModelArg, limit: int = 0) -> None:
    """The model's audit trail: every alias change and gate decision, then the worker's
    retraining pipelines step by step."""
    with _client() as client:
        table = Table(
            "time", "action", "alias", "version", "previous", "actor", "reason", "details"
        )
        for e in client.history(model, limit):
            details = " ".join(f"{k}={v}" for k, v in sorted(e.details.items()))
            table.add_row(
                e.time.ToDatetime().isoformat(timespec="seconds"),
                e.action,
                e.alias,
                e.version,
                e.previous_version,
                e.actor,
                e.reason,
                details,
            )
        console.print(table)
    from kloop_client.demo import pipeline_table

    # The worker's own log: each retrain's steps and decisions with their numbers.
    audit = PipelineAudit(_endpoints().redis_url, model)
    try:
        console.print(pipeline_table(model, audit.entries(limit)))
    except redis.RedisError as e:
        err.print(f"[yellow]retraining pipelines not shown[/]: Redis: {e}")
    finally:
        audit.close()


def main() -> None:
    app(sys.argv[1:])


if __name__ == "__main__":
    main()

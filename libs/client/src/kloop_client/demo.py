"""`kloop demo`: the loop end to end on a running platform, narrated for a person."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Mapping
from pathlib import Path

from rich.console import Console
from rich.table import Table

from kloop.registry.v1 import registry_pb2 as reg
from kloop.training.v1 import training_pb2 as tr
from kloop_client.platform import Endpoints
from kloop_client.sdk import GatewayClient, KloopClient, KloopError
from kloop_model.dataset import builtin_dataset, shifted_dataset

STAGE_STYLE = {tr.RUN_STATE_SUCCEEDED: "green", tr.RUN_STATE_FAILED: "red"}
SHOWN_METRICS = ("accuracy", "f1", "roc_auc", "log_loss")


def _fmt_metrics(metrics: Mapping[str, float]) -> str:
    m = dict(metrics)
    return ", ".join(f"{k} {m[k]:.3f}" for k in SHOWN_METRICS if k in m)


def _require_new_model(client: KloopClient, model: str) -> None:
    """The demo tells the story of a model from its first version."""
    if model in {m.name for m in client.list_models()}:
        raise KloopError(
            "ALREADY_EXISTS",
            f"model {model!r} already has versions on this platform; start from a clean "
            "state with `kloop up --fresh` (or `make demo`, which does)",
        )


def write_extended_dataset(home: Path) -> Path:
    """The built-in sentences plus the shipped shifted-domain ones, as JSONL."""
    path = home / "datasets" / "demo-extended.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = []
    for ds in (builtin_dataset(), shifted_dataset()):
        rows += [{"text": t, "label": int(y)} for t, y in zip(ds.texts, ds.labels, strict=True)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def wait_for_version(gw: GatewayClient, model: str, version: str, timeout: float = 60.0) -> None:
    """Until the gateway answers with `version` (inference hot-reloads on registry events)."""
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            body, _ = gw.predict_http(model, f"is v{version} live yet {time.time_ns()}")
            if body["model"]["version"] == version:
                return
            last = f"v{body['model']['version']} still answering"
        except KloopError as e:
            last = e
        time.sleep(0.25)
    raise KloopError("DEADLINE_EXCEEDED", f"v{version} not served after {timeout:.0f} s: {last}")


class LiveTraffic:
    """A background client predicting through the gateway until the block ends."""

    def __init__(self, gw: GatewayClient, model: str) -> None:
        self.gw, self.model = gw, model
        self.sent = self.failed = 0
        self.versions_in_order: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="kloop-demo-traffic", daemon=True)

    def _run(self) -> None:
        n = 0
        while not self._stop.is_set():
            n += 1
            try:
                # Distinct texts: every request really reaches the model.
                body, _ = self.gw.predict_http(self.model, f"live traffic request {n} works well")
                version = body["model"]["version"]
                if not self.versions_in_order or self.versions_in_order[-1] != version:
                    self.versions_in_order.append(version)
            except (KloopError, OSError):
                self.failed += 1
            self.sent += 1

    def wait_for_version(self, version: str, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.versions_in_order and self.versions_in_order[-1] == version:
                return
            time.sleep(0.05)
        raise KloopError("DEADLINE_EXCEEDED", f"v{version} not served after {timeout:.0f} s")

    def __enter__(self) -> LiveTraffic:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


class Demo:
    def __init__(
        self,
        client: KloopClient,
        gateway: GatewayClient,
        endpoints: Endpoints,
        home: Path,
        console: Console,
    ):
        self.c, self.gw, self.ep, self.home, self.out = client, gateway, endpoints, home, console

    def train(self, model: str, title: str, **kwargs: object) -> tr.Run:
        self.out.print(f"  training: {title}")
        started = time.monotonic()
        seen: list[str] = []

        def on_event(e: tr.RunEvent) -> None:
            if e.stage and (not seen or seen[-1] != e.stage):
                seen.append(e.stage)
                detail = "" if e.message == e.stage else f"  {e.message}"
                self.out.print(f"    [dim]{e.progress * 100:5.1f}%[/] {e.stage}{detail}")

        run = self.c.train(model, on_event=on_event, **kwargs)
        took = time.monotonic() - started
        if run.state != tr.RUN_STATE_SUCCEEDED:
            raise KloopError("FAILED", f"run {run.run_id} failed: {run.error}")
        self.out.print(
            f"  [green]✓[/] version [bold]{run.model_version}[/] registered in {took:.1f} s "
            f"(data {run.dataset_digest[:12]}, MLflow run {run.mlflow_run_id[:12]})"
        )
        self.out.print(f"    holdout: {_fmt_metrics(run.metrics)}")
        parity = run.metrics.get("onnx_parity_max_abs_diff")
        if parity is not None:
            self.out.print(f"    ONNX parity vs NumPy: max |diff| = {parity:.2e}")
        return run

    def gate(self, model: str, version: str, target: str = "production") -> reg.PromotionDecision:
        d = self.c.promote(model, version, target=target, reason="kloop demo")
        verdict = "[green]APPROVED[/]" if d.approved else "[red]REJECTED[/]"
        self.out.print(f"  gate → {target}: {verdict}  {d.explanation}")
        if d.baseline_version:
            self.out.print(
                f"    {d.metric} on the same holdout ({d.holdout_size} rows, "
                f"{d.holdout_digest[:12]}): candidate v{d.candidate_version} "
                f"{d.candidate_value:.4f} vs production v{d.baseline_version} "
                f"{d.baseline_value:.4f}, margin {d.margin:g}"
            )
        return d

    def run(self, model: str = "sentiment") -> None:
        out = self.out
        _require_new_model(self.c, model)
        out.rule("[bold]kloop demo: train → track → register → gate → promote → roll back")
        out.print(f"MLflow UI: [link]{self.ep.mlflow_url}[/]   model: [bold]{model}[/]")
        started = time.monotonic()

        out.rule("1. v1 on the built-in dataset")
        v1 = self.train(model, f"{len(builtin_dataset().texts)} labeled sentences")
        self.gate(model, v1.model_version)

        out.rule("2. a worse challenger (1 epoch, heavy L2)")
        worse = self.train(model, "same data, starved of training", params={"epochs": 1, "l2": 1.0})
        self.gate(model, worse.model_version)

        out.rule("3. a better challenger (more data, new vocabulary)")
        extended = write_extended_dataset(self.home)
        better = self.train(
            model,
            f"built-in + shifted-domain sentences ({extended.name})",
            dataset_uri=str(extended),
        )
        self.gate(model, better.model_version)

        self.serve(model)

        out.rule("5. roll back, then forward, under live traffic")
        with LiveTraffic(self.gw, model) as traffic:
            back = self.c.rollback(model, "production", reason="kloop demo: roll back")
            out.print(f"  rollback: production v{back.previous_version} → v{back.version}")
            traffic.wait_for_version(back.version)
            fwd = self.c.rollback(model, "production", reason="kloop demo: roll forward")
            out.print(f"  roll forward: production v{fwd.previous_version} → v{fwd.version}")
            traffic.wait_for_version(fwd.version)
        out.print(
            f"  live traffic through the gateway: {traffic.sent} requests, "
            f"{traffic.failed} failed; versions answering, in order: "
            f"{' → '.join('v' + v for v in traffic.versions_in_order)}"
        )

        out.rule("summary")
        self.summary(model)
        out.print(
            f"loop wall time: {time.monotonic() - started:.1f} s   "
            f"MLflow UI: {self.ep.mlflow_url}   stop the platform with: kloop down"
        )

    def serve(self, model: str) -> None:
        out = self.out
        out.rule("4. serve: predictions through the gateway")
        production = self.c.resolve(model, "production").version
        out.print(f"  waiting for inference to load production v{production} …")
        wait_for_version(self.gw, model, production)
        for text in ("an excellent product, it works perfectly", "broken on arrival, a waste"):
            body, _ = self.gw.predict_http(model, text)
            out.print(
                f"  HTTP  {text!r}: {body['label']} ({body['score']:.3f}) "
                f"by v{body['model']['version']} \\[{body['model']['alias']}]"
            )
        p = self.gw.predict_grpc(model, "the service was friendly and quick")
        out.print(
            f"  gRPC  'the service was friendly and quick': {p.label} ({p.score:.3f}) "
            f"by v{p.model.version} \\[{p.model.alias}]"
        )
        text = f"kloop demo cache check {time.time_ns()}"
        _, first_cached = self.gw.predict_http(model, text)
        # The gateway writes cache entries off the request path, in small batches.
        deadline = time.monotonic() + 5
        while True:
            _, cached = self.gw.predict_http(model, text)
            if cached or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        out.print(
            f"  the same text again: first {'cache hit' if first_cached else 'cache miss'}, "
            f"then {'cache hit' if cached else 'cache miss'}"
        )

    def summary(self, model: str) -> None:
        versions = Table(title=f"versions of {model}")
        for col in ("version", "aliases", *SHOWN_METRICS, "sha256"):
            versions.add_column(col)
        for v in sorted(self.c.list_versions(model), key=lambda v: int(v.version)):
            versions.add_row(
                v.version,
                ",".join(v.aliases),
                *(f"{v.metrics[k]:.3f}" if k in v.metrics else "-" for k in SHOWN_METRICS),
                v.sha256[:12],
            )
        self.out.print(versions)
        trail = Table(title="audit trail")
        for col in ("time", "action", "alias", "version", "previous", "actor", "reason"):
            trail.add_column(col)
        for e in self.c.history(model):
            trail.add_row(
                e.time.ToDatetime().strftime("%H:%M:%S"),
                e.action,
                e.alias,
                e.version,
                e.previous_version,
                e.actor,
                e.reason,
            )
        self.out.print(trail)

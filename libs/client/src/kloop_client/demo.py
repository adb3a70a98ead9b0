"""`kloop demo`: the loop end to end on a running platform, narrated for a person."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from pathlib import Path

from rich.console import Console
from rich.table import Table

from kloop.registry.v1 import registry_pb2 as reg
from kloop.training.v1 import training_pb2 as tr
from kloop_client.platform import Endpoints
from kloop_client.sdk import KloopClient, KloopError
from kloop_model.dataset import builtin_dataset, shifted_dataset

STAGE_STYLE = {tr.RUN_STATE_SUCCEEDED: "green", tr.RUN_STATE_FAILED: "red"}
SHOWN_METRICS = ("accuracy", "f1", "roc_auc", "log_loss")


def _fmt_metrics(metrics: Mapping[str, float]) -> str:
    m = dict(metrics)
    return ", ".join(f"{k} {m[k]:.3f}" for k in SHOWN_METRICS if k in m)


def _pick_model_name(client: KloopClient, wanted: str) -> str:
    existing = {m.name for m in client.list_models()}
    if wanted not in existing:
        return wanted
    n = 2
    while f"{wanted}-{n}" in existing:
        n += 1
    return f"{wanted}-{n}"


def write_extended_dataset(home: Path) -> Path:
    """The built-in sentences plus the shipped shifted-domain ones, as JSONL."""
    path = home / "datasets" / "demo-extended.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = []
    for ds in (builtin_dataset(), shifted_dataset()):
        rows += [{"text": t, "label": int(y)} for t, y in zip(ds.texts, ds.labels, strict=True)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


class Demo:
    def __init__(self, client: KloopClient, endpoints: Endpoints, home: Path, console: Console):
        self.c, self.ep, self.home, self.out = client, endpoints, home, console

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

    def run(self, wanted_model: str = "sentiment") -> None:
        out = self.out
        model = _pick_model_name(self.c, wanted_model)
        out.rule("[bold]kloop demo: train → track → register → gate → promote → roll back")
        out.print(f"MLflow UI: [link]{self.ep.mlflow_url}[/]   model: [bold]{model}[/]")
        if model != wanted_model:
            out.print(f"  ({wanted_model!r} already exists from an earlier run; using {model!r})")
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

        out.rule("4. roll back, then forward")
        back = self.c.rollback(model, "production", reason="kloop demo: roll back")
        out.print(f"  rollback: production v{back.previous_version} → v{back.version}")
        fwd = self.c.rollback(model, "production", reason="kloop demo: roll forward")
        out.print(f"  roll forward: production v{fwd.previous_version} → v{fwd.version}")

        out.rule("summary")
        self.summary(model)
        out.print(
            f"loop wall time: {time.monotonic() - started:.1f} s   "
            f"MLflow UI: {self.ep.mlflow_url}   stop the platform with: kloop down"
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

"""`kloop demo`: the loop end to end on a running platform, narrated for a person."""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.table import Table

from kloop.registry.v1 import registry_pb2 as reg
from kloop.training.v1 import training_pb2 as tr
from kloop_client.platform import Endpoints
from kloop_client.sdk import (
    DOCUMENT_UNFINISHED,
    GatewayClient,
    KloopClient,
    KloopError,
    PipelineAudit,
    RagClient,
)
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
    """A background client predicting through the gateway until the block ends; with
    `labels`, it also sends each prediction's true label as feedback."""

    def __init__(
        self,
        gw: GatewayClient,
        model: str,
        texts: Sequence[str] = (),
        labels: Sequence[str] = (),
        rate: float = 40.0,
    ) -> None:
        self.gw, self.model = gw, model
        self.texts, self.labels = texts, labels
        self.interval = 1 / rate
        self.sent = self.failed = 0
        self.versions_in_order: list[str] = []
        self.answered_by: Counter[str] = Counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="kloop-demo-traffic", daemon=True)

    def _run(self) -> None:
        n = 0
        # Paced, like real clients: the demo's key has a rate limit.
        while not self._stop.wait(self.interval):
            n += 1
            try:
                if self.texts:
                    i = n % len(self.texts)
                    body, _ = self.gw.predict_http(self.model, self.texts[i])
                    if self.labels:
                        self.gw.feedback(body["id"], self.labels[i])
                else:
                    # Distinct texts: every request really reaches the model.
                    text = f"live traffic request {n} works well"
                    body, _ = self.gw.predict_http(self.model, text)
                version = body["model"]["version"]
                self.answered_by[version] += 1
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


BATCH = 25
DOCS_COLLECTION = "docs"  # kloop up creates it with the embedder
# Restaurant reviews [0, HELD_OUT) are the shifted traffic with feedback; the rest are
# kept from every training set.
HELD_OUT = 100
LABELS = ("negative", "positive")
# The worker's last audit event of a pipeline: its final state (kloop_worker.pipelines).
PIPELINE_END = {"succeeded", "rejected", "rolled_back", "failed"}


def describe_window(window: Mapping[str, Any]) -> str:
    if not window.get("decided"):
        return f"{window.get('events', 0)} events, not decided ({window.get('note', '')})"
    parts = [
        f"{d['feature']} {d['metric']} {d['value']:.3f}" + ("[red]![/]" if d["drifted"] else "")
        for d in window.get("drift", [])
    ]
    verdict = "[red]DRIFT[/]" if window.get("drifted") else "[green]no drift[/]"
    return f"{verdict}  " + ", ".join(parts)


class DriftWatch:
    """The drift monitor's /v1/status of one model version, polled. (The JSON renders
    int64 fields as strings, as protobuf's JSON mapping does.)"""

    def __init__(self, url: str, model: str) -> None:
        self._http = httpx.Client(base_url=url, timeout=10)
        self.model = model

    def status(self, version: str) -> dict[str, Any]:
        resp = self._http.get("/v1/status", params={"model": self.model, "version": version})
        if resp.status_code == 404:  # no event of the version counted yet
            return {"last_window": {}}
        resp.raise_for_status()
        versions = resp.json()["versions"]
        return dict(versions[0]) if versions else {"last_window": {}}

    def window_events(self, version: str) -> int:
        return int(self.status(version).get("window_events") or 0) or 200

    def wait(self, version: str, *, events: int = 0, windows: int = 0) -> dict[str, Any]:
        """The status once the version has at least `events` counted events and
        `windows` closed windows."""
        deadline = time.monotonic() + 60
        while True:
            status = self.status(version)
            if events_processed(status) >= events and window_sequence(status) >= windows:
                return status
            if time.monotonic() > deadline:
                raise KloopError(
                    "DEADLINE_EXCEEDED",
                    f"the drift monitor counted {events_processed(status)} events of "
                    f"v{version} ({window_sequence(status)} windows) after 60 s",
                )
            time.sleep(0.1)

    def close(self) -> None:
        self._http.close()


def events_processed(status: Mapping[str, Any]) -> int:
    return int(status.get("events_processed") or 0)


def window_sequence(status: Mapping[str, Any]) -> int:
    return int(status.get("last_window", {}).get("sequence") or 0)


def pipeline_table(model: str, entries: Sequence[Mapping[str, str]]) -> Table:
    """The worker's audit log: every retrain request, step outcome and decision."""
    table = Table(title=f"retraining pipelines of {model} (the worker's audit log)")
    for col in ("time", "pipeline", "step", "event", "message"):
        table.add_column(col)
    for e in entries:
        at = time.strftime("%H:%M:%S", time.localtime(float(e["time"])))
        table.add_row(at, e["pipeline_id"][:8], e["step"], e["event"], e["message"])
    return table


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
        self.drifted_window: dict[str, Any] = {}

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
        out.rule("[bold]kloop demo: train → serve → drift → retrain → gate → canary → promote")
        out.print(f"MLflow UI: [link]{self.ep.mlflow_url}[/]   model: [bold]{model}[/]")
        started = time.monotonic()

        out.rule("1. v1 on the built-in dataset")
        v1 = self.train(model, f"{len(builtin_dataset().texts)} labeled sentences")
        self.gate(model, v1.model_version)

        out.rule("2. a worse challenger (1 epoch, heavy L2)")
        worse = self.train(model, "same data, starved of training", params={"epochs": 1, "l2": 1.0})
        self.gate(model, worse.model_version)

        self.serve(model)
        # The shifted dataset's first part is the live traffic whose labels come back
        # as feedback (the retrain learns from it); the rest is traffic no version was
        # trained on, to show the drift clearing.
        shifted = shifted_dataset()
        labels = [LABELS[int(y)] for y in shifted.labels]
        seen = list(zip(shifted.texts[:HELD_OUT], labels[:HELD_OUT], strict=True))
        unseen = shifted.texts[HELD_OUT:]
        drift = DriftWatch(self.ep.drift_monitor_http, model)
        try:
            delay = self.shift(model, drift, v1.model_version, seen)
            promoted = self.close_loop(model, v1.model_version, seen)
            self.drift_clears(model, drift, promoted, unseen)
        finally:
            drift.close()

        out.rule("7. roll back, then forward, under live traffic")
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

        self.ask_about_kloop()

        out.rule("summary")
        self.summary(model)
        out.print(
            f"drift detected {delay} events after the shift began; "
            f"loop wall time: {time.monotonic() - started:.1f} s"
        )
        out.print(f"MLflow UI: {self.ep.mlflow_url}   stop the platform with: kloop down")

    def shift(
        self, model: str, drift: DriftWatch, version: str, rows: Sequence[tuple[str, str]]
    ) -> int:
        """Restaurant reviews (new vocabulary), each prediction's true label sent back as
        feedback, until the monitor asks for a retrain. Returns the events from the
        shift's onset to the alarm (to the resolution of one batch)."""
        out = self.out
        out.rule("4. traffic shifts to restaurant reviews; their labels come back as feedback")
        status = drift.status(version)
        counted, seen_window = events_processed(status), window_sequence(status)
        before = (status.get("last_trigger") or {}).get("trigger_id")
        stream = itertools.cycle(rows)
        sent = 0
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            batch = [next(stream) for _ in range(BATCH)]
            predictions = self.gw.predict_batch_http(model, [t for t, _ in batch])
            for prediction, (_, label) in zip(predictions, batch, strict=True):
                self.gw.feedback(prediction["id"], label)
            sent += len(batch)
            status = drift.wait(version, events=counted + sent)
            if window_sequence(status) != seen_window:
                seen_window = window_sequence(status)
                out.print(f"  window {seen_window}: {describe_window(status['last_window'])}")
            trigger = status.get("last_trigger") or {}
            if trigger.get("trigger_id") not in (None, before):
                self.drifted_window = status["last_window"]
                out.print(
                    f"  [bold]drift detected[/] after {sent} shifted predictions: "
                    f"{trigger.get('windows', '?')} drifted windows in a row → "
                    f"retrain requested ({trigger['outcome']}, task {trigger['task_id'][:8]})"
                )
                live = status.get("live") or {}
                if int(live.get("labeled") or 0):
                    out.print(
                        f"  live accuracy of v{version} on the new traffic: "
                        f"{live['accuracy']:.3f} (F1 {live['f1']:.3f}, {live['labeled']} labels)"
                    )
                return sent
        raise KloopError("DEADLINE_EXCEEDED", "no drift alarm within 120 s of shifted traffic")

    def close_loop(self, model: str, old: str, rows: Sequence[tuple[str, str]]) -> str:
        """Follow the worker's pipeline (its audit log) while the shifted traffic goes on
        (the canary's share of it is what the canary is judged on), until the pipeline
        ends. Returns the new production version."""
        out = self.out
        out.rule("5. the worker retrains: data → train → evaluate → gate → canary → promote")
        audit = PipelineAudit(self.ep.redis_url, model)
        last: dict[str, str] = {}
        texts, labels = [t for t, _ in rows], [y for _, y in rows]
        try:
            with LiveTraffic(self.gw, model, texts, labels) as traffic:
                for last in audit.follow(timeout=300):
                    out.print(f"  [dim]{last['step']:<12}[/] {last['event']:<18} {last['message']}")
                    if last["event"] in PIPELINE_END:
                        break
        finally:
            audit.close()
        answered = ", ".join(f"v{v}: {n}" for v, n in sorted(traffic.answered_by.items()))
        out.print(
            f"  live traffic meanwhile: {traffic.sent} requests ({answered}), "
            f"{traffic.failed} failed"
        )
        production = str(self.c.resolve(model, "production").version)
        if production == old:
            raise KloopError("FAILED", f"the pipeline ended without promoting: {last}")
        out.print(f"  [bold]production v{old} → v{production}[/]")
        return production

    def drift_clears(
        self, model: str, drift: DriftWatch, version: str, texts: Sequence[str]
    ) -> None:
        out = self.out
        out.rule(
            f"6. restaurant reviews no version was trained on, to v{version}: drift before/after"
        )
        wait_for_version(self.gw, model, version)
        # The window being filled holds the canary's share of the earlier traffic (texts
        # v{version} was trained on); the one after it holds only unseen texts.
        status = drift.status(version)
        window, filled = drift.window_events(version), int(status.get("current_window_events") or 0)
        stream = itertools.cycle(texts)
        for _ in range(-(-(2 * window - filled) // BATCH)):
            self.gw.predict_batch_http(model, [next(stream) for _ in range(BATCH)])
        status = drift.wait(version, windows=window_sequence(status) + 2)
        after = {(d["feature"], d["metric"]): d for d in status["last_window"].get("drift", [])}
        table = Table(title="drift of the last window: the old version vs the new one")
        # Thresholds differ per version: they are never below what sampling alone
        # reaches for the version's reference size (its holdout) and the window's.
        for col in (
            "feature",
            "metric",
            "before (v1)",
            "threshold",
            f"after (v{version})",
            "threshold",
        ):
            table.add_column(col)
        for d in self.drifted_window.get("drift", []):
            a = after.get((d["feature"], d["metric"]))
            table.add_row(
                d["feature"],
                d["metric"],
                f"{d['value']:.3f}" + (" [red]![/]" if d["drifted"] else ""),
                f"{d['threshold']:.3f}",
                "-" if a is None else f"{a['value']:.3f}" + (" [red]![/]" if a["drifted"] else ""),
                "-" if a is None else f"{a['threshold']:.3f}",
            )
        out.print(table)
        still = [f"{d['feature']} {d['metric']}" for d in after.values() if d["drifted"]]
        cleared = sum(not d["drifted"] for d in after.values())
        if still:
            out.print(
                f"  {cleared} of {len(after)} statistics back under their thresholds; still "
                f"above: {', '.join(still)} (v{version}'s reference is its holdout, which "
                "also holds the old kind of text; this traffic has none)"
            )
        else:
            out.print(f"  [green]no drift[/]: v{version}'s reference matches the new traffic")

    def ask_about_kloop(self) -> None:
        """RAG on the same platform: the project's own docs in, a cited answer out."""
        out = self.out
        out.rule("8. RAG: kloop's own documentation, a question, an answer with citations")
        files = [p for p in (Path("README.md"), Path("deploy/README.md")) if p.is_file()]
        files += sorted(Path().glob("services/*/README.md")) + sorted(
            Path().glob("libs/*/README.md")
        )
        if not self.ep.rag_http or not files:
            out.print(
                "  skipped: run the demo from the repository (its README files are the corpus)"
            )
            return
        documents = [
            {"id": p.as_posix(), "source": p.as_posix(), "text": p.read_text(encoding="utf-8")}
            for p in files
        ]
        started = time.monotonic()
        try:
            accepted = self.gw.add_documents(DOCS_COLLECTION, documents)
        except KloopError as e:
            if "404" in e.code:
                out.print(
                    f"  skipped: no {DOCS_COLLECTION!r} collection ({e.message}); "
                    "`make embedder` builds the embedder `kloop up` serves it with"
                )
                return
            raise
        chunks = 0
        for doc in accepted:
            status = self.wait_for_document(doc["status_url"])
            if status["status"] != "succeeded":
                raise KloopError("FAILED", f"{doc['id']}: {status.get('error')}")
            chunks += int(status.get("chunks") or 0)
        out.print(
            f"  ingested {len(documents)} documents ({chunks} chunks, embedded by the "
            f"served all-MiniLM-L6-v2) in {time.monotonic() - started:.1f} s"
        )
        question = "How does kloop decide whether a retrained model is promoted?"
        with RagClient(self.ep.rag_http, self.gw.api_key) as rag:
            answer = rag.ask(question, DOCS_COLLECTION, k=5)
        out.print(f"  [bold]Q:[/] {question}")
        out.print(f"  [bold]A[/] ({answer['mode']}): {answer['answer']}")
        for c in answer["citations"]:
            out.print(
                f"    [{c['ref']}] {c['source']} (chunk {c['chunk']}, score {c['score']:.3f})"
            )

    def wait_for_document(self, status_url: str, timeout: float = 120) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while (status := self.gw.document_status(status_url))["status"] in DOCUMENT_UNFINISHED:
            if time.monotonic() > deadline:
                raise KloopError(
                    "DEADLINE_EXCEEDED", f"not ingested after {timeout:.0f} s: {status}"
                )
            time.sleep(0.2)
        return status

    def serve(self, model: str) -> None:
        out = self.out
        out.rule("3. serve: predictions through the gateway")
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
        audit = PipelineAudit(self.ep.redis_url, model)
        try:
            self.out.print(pipeline_table(model, audit.entries()))
        finally:
            audit.close()

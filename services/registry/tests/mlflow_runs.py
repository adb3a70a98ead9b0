"""Test helper: log a finished run whose `model/` artifacts look like training's output."""

from __future__ import annotations

import hashlib
import json
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from mlflow import MlflowClient

from kloop_model.classifier import SentimentClassifier, TrainingParams
from kloop_model.dataset import builtin_dataset
from kloop_model.onnx_export import export_onnx, sentiment_signature

from .onnx_models import keyword_model

# 10 positives that say "good", 10 negatives: a keyword model's quality is set by
# how far apart its two probabilities are.
KEYWORD_HOLDOUT: list[tuple[str, int]] = [("good", 1)] * 10 + [("bad", 0)] * 10


@dataclass(frozen=True)
class LoggedRun:
    run_id: str
    sha256: str
    size_bytes: int


def log_model_run(
    tracking_uri: str,
    model_file: Path,
    holdout: Sequence[tuple[str, int]],
    *,
    signature: dict[str, object] | None = None,
    model_json: dict[str, object] | None = None,
    metrics: dict[str, float] | None = None,
    artifact_path: str = "model",
) -> LoggedRun:
    client = MlflowClient(tracking_uri)
    run = client.create_run("0")
    with tempfile.TemporaryDirectory() as d:
        out = Path(d)
        (out / "model.onnx").write_bytes(model_file.read_bytes())
        (out / "model.json").write_text(json.dumps(model_json or {}))
        (out / "reference_profile.json").write_text("{}")
        if signature is not None:
            (out / "signature.json").write_text(json.dumps(signature))
        (out / "holdout.jsonl").write_text(
            "".join(json.dumps({"text": t, "label": y}) + "\n" for t, y in holdout)
        )
        client.log_artifacts(run.info.run_id, str(out), artifact_path)
    for key, value in (metrics or {}).items():
        client.log_metric(run.info.run_id, key, value)
    client.set_terminated(run.info.run_id)
    data = model_file.read_bytes()
    return LoggedRun(run.info.run_id, hashlib.sha256(data).hexdigest(), len(data))


def log_keyword_run(tracking_uri: str, tmp: Path, *, low: float, high: float) -> LoggedRun:
    """A run with a keyword model: the closer `low`/`high` are to 0/1, the better it is."""
    model = keyword_model(tmp / f"keyword-{low}-{high}.onnx", low=low, high=high)
    return log_model_run(
        tracking_uri,
        model,
        KEYWORD_HOLDOUT,
        signature={"inputs": [{"name": "text"}], "outputs": [{"name": "probability"}]},
        metrics={"accuracy": 1.0},
    )


def log_sentiment_run(tracking_uri: str, tmp: Path, *, epochs: int = 200) -> LoggedRun:
    """A run with the real sentiment model trained on the builtin dataset (which is also
    its holdout: the gate only needs both versions scored on the same rows)."""
    data = builtin_dataset()
    model = SentimentClassifier(TrainingParams(epochs=epochs)).fit(data.texts, data.labels)
    path = tmp / f"sentiment-{epochs}.onnx"
    path.write_bytes(export_onnx(model).SerializeToString())
    return log_model_run(
        tracking_uri,
        path,
        list(zip(data.texts, data.labels.tolist(), strict=True)),
        signature=sentiment_signature(),
        model_json=model.to_dict(),
    )

"""The MLflow adapter against the real MLflow server (and a dead one)."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

import pytest
from mlflow import MlflowClient

from kloop_client.local import free_port
from kloop_training.pipeline import DatasetInfo
from kloop_training.tracking import MlflowTracker, TrackingError

DIGEST = "ab" * 32


def _info() -> DatasetInfo:
    return DatasetInfo("reviews", "file:///data/reviews.csv", DIGEST, 120, 61)


def test_a_run_gets_params_metrics_input_artifacts_and_status(
    tracker: MlflowTracker, mlflow_uri: str, tmp_path: Path
) -> None:
    experiment = f"kloop-test/{uuid.uuid4().hex[:8]}"
    run_id = tracker.start_run(experiment, "r1", {"kloop.run_id": "abc", "team": "nlp"})
    tracker.log_run(
        run_id,
        params={"epochs": 200, "l2": 0.001, "dataset_source": "file:///data/reviews.csv"},
        metrics={"accuracy": 0.9, "log_loss": 0.3},
        dataset=_info(),
    )
    (tmp_path / "model.onnx").write_bytes(b"onnx")
    (tmp_path / "holdout.jsonl").write_text('{"text": "a", "label": 1}\n')
    tracker.log_artifacts(run_id, tmp_path, "model")
    tracker.set_tags(run_id, {"kloop.model_version": "4"})
    tracker.end_run(run_id, "FINISHED")

    client = MlflowClient(mlflow_uri)
    run = client.get_run(run_id)
    assert client.get_experiment(run.info.experiment_id).name == experiment
    assert run.info.status == "FINISHED"
    assert run.data.params == {
        "epochs": "200", "l2": "0.001", "dataset_source": "file:///data/reviews.csv",
    }  # fmt: skip
    assert run.data.metrics == {"accuracy": 0.9, "log_loss": 0.3}
    assert run.data.tags["kloop.run_id"] == "abc"
    assert run.data.tags["kloop.model_version"] == "4"
    (dataset_input,) = run.inputs.dataset_inputs
    dataset = dataset_input.dataset
    # MLflow keeps at most 36 characters of a digest; the profile has the full sha256.
    assert dataset.digest == DIGEST[:32]
    assert dataset.name == "reviews"
    assert json.loads(dataset.source) == {"uri": "file:///data/reviews.csv"}
    assert json.loads(dataset.profile) == {"num_rows": 120, "num_positive": 61, "sha256": DIGEST}
    tags = {t.key: t.value for t in dataset_input.tags}
    assert tags == {"mlflow.data.context": "training", "kloop.dataset_digest": DIGEST}
    files = {f.path for f in client.list_artifacts(run_id, "model")}
    assert files == {"model/model.onnx", "model/holdout.jsonl"}


def test_concurrent_runs_share_one_experiment(tracker: MlflowTracker, mlflow_uri: str) -> None:
    experiment = f"kloop-test/{uuid.uuid4().hex[:8]}"
    ids = [tracker.start_run(experiment, f"r{i}", {}) for i in range(2)]
    client = MlflowClient(mlflow_uri)
    assert len({client.get_run(i).info.experiment_id for i in ids}) == 1


def test_end_run_failed(tracker: MlflowTracker, mlflow_uri: str) -> None:
    run_id = tracker.start_run("kloop-test/failing", "r", {})
    tracker.end_run(run_id, "FAILED")
    assert MlflowClient(mlflow_uri).get_run(run_id).info.status == "FAILED"


def test_ping(tracker: MlflowTracker) -> None:
    assert tracker.ping()
    assert not MlflowTracker(f"http://127.0.0.1:{free_port()}", timeout_seconds=1).ping()


def test_a_dead_server_fails_fast_and_says_unreachable(tracker: MlflowTracker) -> None:
    # `tracker` (session fixture) has set MLflow's client to 0 retries, 5 s timeout.
    dead = f"http://127.0.0.1:{free_port()}"
    started = time.monotonic()
    with pytest.raises(TrackingError) as caught:
        MlflowTracker(dead, timeout_seconds=1).start_run("kloop-test/x", "r", {})
    assert time.monotonic() - started < 5
    assert f"MLflow tracking server at {dead} is unreachable" in str(caught.value)


def test_server_side_rejections_are_not_called_unreachable(tracker: MlflowTracker) -> None:
    with pytest.raises(TrackingError) as caught:
        tracker.end_run("0" * 32, "FINISHED")
    assert "unreachable" not in str(caught.value)
    assert "MLflow ending run as FINISHED failed" in str(caught.value)

"""The MLflow adapter: the only module that imports mlflow.

One MLflow run per training run, in experiment `<prefix>/<model name>`, written with
`MlflowClient` calls on explicit run ids (no fluent "active run", which is per thread
and would tangle concurrent runs). Failures become `TrackingError`, whose message says
whether MLflow could not be reached at all.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping
from pathlib import Path

import requests
from mlflow import MlflowClient
from mlflow.entities import Dataset, DatasetInput, InputTag, Metric, Param, RunTag
from mlflow.exceptions import MlflowException

from kloop_training.pipeline import DatasetInfo, StepError

# MLflow stores a dataset digest in a 36-character column; the full sha256 goes into the
# dataset's profile, an input tag and the run's `kloop.dataset_digest` tag.
MLFLOW_DIGEST_CHARS = 32
_SCHEMA = json.dumps(
    {
        "mlflow_colspec": [
            {"type": "string", "name": "text", "required": True},
            {"type": "long", "name": "label", "required": True},
        ]
    }
)
# log_batch limits of the MLflow REST API.
_BATCH_PARAMS = 100
_BATCH_METRICS = 1000


class TrackingError(StepError):
    """An MLflow call failed; the message names the server and says what went wrong."""


def configure_mlflow_client(timeout_seconds: int, max_retries: int) -> None:
    """MLflow's client reads these per request from the environment; its defaults (120 s
    timeout, 7 retries with exponential backoff) turn a dead server into minutes."""
    os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = str(timeout_seconds)
    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = str(max_retries)
    os.environ["MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR"] = "1"
    # Ending a run prints "View run ... at" to stdout, which must hold JSON logs only.
    os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = "true"


def _unreachable(error: BaseException) -> bool:
    """Does the exception chain say the server could not be reached or timed out?"""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, requests.ConnectionError | requests.Timeout | ConnectionError):
            return True
        if isinstance(seen, MlflowException) and "timeout exception" in str(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _first_line(error: BaseException, limit: int = 300) -> str:
    text = (str(error).splitlines() or [type(error).__name__])[0]
    return text if len(text) <= limit else text[:limit] + "..."


class MlflowTracker:
    def __init__(self, tracking_uri: str, *, timeout_seconds: int = 5) -> None:
        self._uri = tracking_uri
        self._timeout = timeout_seconds
        self._client = MlflowClient(tracking_uri=tracking_uri)

    def _error(self, action: str, error: BaseException) -> TrackingError:
        if _unreachable(error):
            return TrackingError(
                f"MLflow tracking server at {self._uri} is unreachable ({action}): "
                f"{_first_line(error)}"
            )
        return TrackingError(f"MLflow {action} failed: {_first_line(error)}")

    def ping(self) -> bool:
        """True when the tracking server answers its health check (readiness)."""
        if not self._uri.startswith(("http://", "https://")):
            return True  # a local file or database store has no server to lose
        try:
            response = requests.get(f"{self._uri.rstrip('/')}/health", timeout=self._timeout)
        except requests.RequestException:
            return False
        return response.ok

    def _experiment_id(self, name: str) -> str:
        found = self._client.get_experiment_by_name(name)
        if found is not None:
            return str(found.experiment_id)
        try:
            return str(self._client.create_experiment(name))
        except MlflowException as e:
            if e.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
            # Another run created it between our lookup and create.
            again = self._client.get_experiment_by_name(name)
            if again is None:
                raise
            return str(again.experiment_id)

    def start_run(self, experiment: str, run_name: str, tags: Mapping[str, str]) -> str:
        try:
            run = self._client.create_run(
                self._experiment_id(experiment), run_name=run_name, tags=dict(tags)
            )
        except (MlflowException, requests.RequestException, OSError) as e:
            raise self._error("start run", e) from e
        return str(run.info.run_id)

    def log_run(
        self,
        run_id: str,
        *,
        params: Mapping[str, str | int | float],
        metrics: Mapping[str, float],
        dataset: DatasetInfo,
    ) -> None:
        """Params, metrics and the dataset input (context "training")."""
        now = int(time.time() * 1000)
        param_list = [Param(k, str(v)) for k, v in params.items()]
        metric_list = [Metric(k, float(v), now, 0) for k, v in metrics.items()]
        try:
            for i in range(0, len(param_list), _BATCH_PARAMS):
                self._client.log_batch(run_id, params=param_list[i : i + _BATCH_PARAMS])
            for i in range(0, len(metric_list), _BATCH_METRICS):
                self._client.log_batch(run_id, metrics=metric_list[i : i + _BATCH_METRICS])
            self._client.log_inputs(run_id, datasets=[_dataset_input(dataset)])
        except (MlflowException, requests.RequestException, OSError) as e:
            raise self._error("logging", e) from e

    def log_artifacts(self, run_id: str, local_dir: Path, artifact_path: str) -> None:
        try:
            self._client.log_artifacts(run_id, str(local_dir), artifact_path)
        except (MlflowException, requests.RequestException, OSError) as e:
            raise self._error("artifact upload", e) from e

    def set_tags(self, run_id: str, tags: Mapping[str, str]) -> None:
        try:
            self._client.log_batch(run_id, tags=[RunTag(k, v) for k, v in tags.items()])
        except (MlflowException, requests.RequestException, OSError) as e:
            raise self._error("tagging", e) from e

    def end_run(self, run_id: str, status: str) -> None:
        """`status`: FINISHED, FAILED or KILLED."""
        try:
            self._client.set_terminated(run_id, status=status)
        except (MlflowException, requests.RequestException, OSError) as e:
            raise self._error(f"ending run as {status}", e) from e


def _dataset_input(info: DatasetInfo) -> DatasetInput:
    source_type = "code" if info.source_uri.startswith("kloop:") else "local"
    entity = Dataset(
        name=info.name,
        digest=info.digest[:MLFLOW_DIGEST_CHARS],
        source_type=source_type,
        source=json.dumps({"uri": info.source_uri}),
        schema=_SCHEMA,
        profile=json.dumps(
            {
                "num_rows": info.num_rows,
                "num_positive": info.num_positive,
                "sha256": info.digest,
            }
        ),
    )
    tags = [
        InputTag("mlflow.data.context", "training"),
        InputTag("kloop.dataset_digest", info.digest),
    ]
    return DatasetInput(dataset=entity, tags=tags)

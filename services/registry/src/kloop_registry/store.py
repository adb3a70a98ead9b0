"""The MLflow adapter: the only module that imports mlflow.

Turns MLflow entities into plain domain records and MLflow failures into kloop errors:
missing things -> NotFound, bad values -> InvalidArgument, a server that cannot be
reached or times out -> Unavailable (fast: see `configure_http`).
"""

from __future__ import annotations

import functools
import json
import os
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import mlflow.artifacts
import requests
from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion as MlflowVersion
from mlflow.entities.model_registry import RegisteredModel as MlflowModel
from mlflow.exceptions import MlflowException

from kloop_core.errors import (
    AlreadyExists,
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    Unavailable,
)
from kloop_registry.audit import TAG_PREFIX as AUDIT_TAG_PREFIX

# Tags the registry writes on each version it registers.
TAG_SHA256 = "kloop.sha256"
TAG_SIZE = "kloop.size_bytes"
TAG_DATASET = "kloop.dataset_digest"
TAG_HOLDOUT = "kloop.holdout_digest"
TAG_ARTIFACT_PATH = "kloop.artifact_path"
TAG_METRICS = "kloop.metrics"

_PAGE = 200
P = ParamSpec("P")
R = TypeVar("R")


@dataclass(frozen=True)
class VersionRecord:
    name: str
    version: str
    aliases: tuple[str, ...]
    run_id: str
    source: str
    status: str
    description: str
    created_at: datetime
    # Every tag except the audit trail (that is served by GetHistory).
    tags: dict[str, str]

    @property
    def artifact_path(self) -> str:
        return self.tags.get(TAG_ARTIFACT_PATH, "")

    @property
    def artifact_uri(self) -> str:
        # runs:/ resolves with any MLflow client; fall back to the raw source.
        if self.run_id and self.artifact_path:
            return f"runs:/{self.run_id}/{self.artifact_path}"
        return self.source

    @property
    def sha256(self) -> str:
        return self.tags.get(TAG_SHA256, "")

    @property
    def size_bytes(self) -> int:
        try:
            return int(self.tags.get(TAG_SIZE, "0"))
        except ValueError:
            return 0

    @property
    def dataset_digest(self) -> str:
        return self.tags.get(TAG_DATASET, "")

    @property
    def metrics(self) -> dict[str, float]:
        try:
            raw = json.loads(self.tags.get(TAG_METRICS, "{}"))
            return {str(k): float(v) for k, v in raw.items()}
        except (ValueError, TypeError, AttributeError):
            return {}


@dataclass(frozen=True)
class RunRecord:
    run_id: str
    artifact_uri: str
    metrics: dict[str, float]


@dataclass(frozen=True)
class ModelRecord:
    name: str
    aliases: dict[str, str]
    latest_version: str
    description: str
    tags: dict[str, str]


def configure_http(timeout_seconds: int, max_retries: int) -> None:
    """MLflow reads these per request from the environment; its defaults (120 s timeout,
    7 retries with exponential backoff) turn a dead server into minutes of waiting."""
    os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = str(timeout_seconds)
    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = str(max_retries)
    os.environ["MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR"] = "1"


def _unreachable(e: BaseException) -> bool:
    """Does the exception chain say the server could not be reached or timed out?"""
    seen: BaseException | None = e
    visited: set[int] = set()
    while seen is not None and id(seen) not in visited:
        visited.add(id(seen))
        if isinstance(seen, requests.ConnectionError | requests.Timeout | ConnectionError):
            return True
        if isinstance(seen, MlflowException) and "failed with timeout exception" in str(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def translate(e: MlflowException | requests.RequestException | OSError) -> Exception:
    if _unreachable(e):
        return Unavailable(f"MLflow is unreachable: {_short(e)}", retry_after=2.0)
    code = getattr(e, "error_code", "")
    message = _short(e)
    if code == "RESOURCE_DOES_NOT_EXIST":
        return NotFound(message)
    if code == "RESOURCE_ALREADY_EXISTS":
        return AlreadyExists(message)
    if code == "INVALID_PARAMETER_VALUE":
        return InvalidArgument(message)
    if code in ("TEMPORARILY_UNAVAILABLE", "REQUEST_LIMIT_EXCEEDED", "SERVICE_UNDER_MAINTENANCE"):
        return Unavailable(f"MLflow: {message}")
    return e


def _short(e: BaseException, limit: int = 300) -> str:
    text = str(e).splitlines()[0] if str(e) else type(e).__name__
    return text if len(text) <= limit else text[:limit] + "..."


def _mlflow_errors(fn: Callable[P, R]) -> Callable[P, R]:
    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except (MlflowException, requests.RequestException, OSError) as e:
            translated = translate(e)
            if translated is e:
                raise
            raise translated from e

    return wrapper


def _version_record(mv: MlflowVersion) -> VersionRecord:
    return VersionRecord(
        name=mv.name,
        version=str(mv.version),
        aliases=tuple(mv.aliases or ()),
        run_id=mv.run_id or "",
        source=mv.source or "",
        status=str(mv.status or ""),
        description=mv.description or "",
        created_at=datetime.fromtimestamp((mv.creation_timestamp or 0) / 1000, UTC),
        tags={k: v for k, v in (mv.tags or {}).items() if not k.startswith(AUDIT_TAG_PREFIX)},
    )


def _with_aliases(record: VersionRecord, aliases: Mapping[str, str]) -> VersionRecord:
    found = tuple(sorted(alias for alias, v in aliases.items() if str(v) == record.version))
    return replace(record, aliases=found)


def _model_record(rm: MlflowModel) -> ModelRecord:
    # `latest_versions` holds the newest version per (legacy) stage; the max is the newest.
    latest = max((int(v.version) for v in rm.latest_versions or ()), default=0)
    return ModelRecord(
        name=rm.name,
        aliases={str(k): str(v) for k, v in (rm.aliases or {}).items()},
        latest_version=str(latest) if latest else "",
        description=rm.description or "",
        tags=dict(rm.tags or {}),
    )


def _quote(value: str) -> str:
    # Names and run ids are validated upstream to a quote-free alphabet; refuse anyway
    # rather than build a filter string that means something else.
    if "'" in value or "\\" in value:
        raise InvalidArgument(f"unsupported character in {value!r}")
    return f"'{value}'"


class MlflowStore:
    def __init__(self, tracking_uri: str, *, ready_timeout_seconds: float = 60.0) -> None:
        self._uri = tracking_uri
        self._client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
        self._ready_timeout = ready_timeout_seconds

    @_mlflow_errors
    def ping(self) -> None:
        self._client.search_registered_models(max_results=1)

    @_mlflow_errors
    def list_models(self) -> list[ModelRecord]:
        return [_model_record(rm) for rm in self._pages(self._client.search_registered_models)]

    @_mlflow_errors
    def get_model(self, name: str) -> ModelRecord:
        return _model_record(self._client.get_registered_model(name))

    @_mlflow_errors
    def list_versions(self, name: str) -> list[VersionRecord]:
        # Also NotFound for an unknown model (not []), and the aliases: search results
        # from MLflow leave them out.
        aliases = self._client.get_registered_model(name).aliases or {}
        found = self._pages(self._client.search_model_versions, f"name = {_quote(name)}")
        return sorted(
            (_with_aliases(_version_record(mv), aliases) for mv in found),
            key=lambda v: int(v.version),
        )

    @_mlflow_errors
    def get_version(self, name: str, version: str) -> VersionRecord:
        return _version_record(self._client.get_model_version(name, version))

    @_mlflow_errors
    def version_by_alias(self, name: str, alias: str) -> VersionRecord:
        try:
            return _version_record(self._client.get_model_version_by_alias(name, alias))
        except MlflowException as e:
            # MLflow answers INVALID_PARAMETER_VALUE for a missing alias; tell "no such
            # model" from "no such alias" only on this (rare) path.
            if e.error_code != "INVALID_PARAMETER_VALUE":
                raise
            self._client.get_registered_model(name)
            raise NotFound(f"model {name!r} has no alias {alias!r}") from e

    @_mlflow_errors
    def version_for_run(self, name: str, run_id: str) -> VersionRecord | None:
        query = f"name = {_quote(name)} and run_id = {_quote(run_id)}"
        found = self._client.search_model_versions(query)
        first = min(map(_version_record, found), key=lambda v: int(v.version), default=None)
        return None if first is None else self.get_version(name, first.version)

    @_mlflow_errors
    def versions_with_sha256(self, sha256: str) -> list[VersionRecord]:
        query = f"tags.`{TAG_SHA256}` = {_quote(sha256)}"
        return [
            _version_record(mv) for mv in self._pages(self._client.search_model_versions, query)
        ]

    @_mlflow_errors
    def get_run(self, run_id: str) -> RunRecord:
        run = self._client.get_run(run_id)
        return RunRecord(run.info.run_id, run.info.artifact_uri, dict(run.data.metrics))

    @_mlflow_errors
    def log_files_run(
        self, experiment: str, folder: Path, artifact_path: str, tags: Mapping[str, str]
    ) -> RunRecord:
        """A finished run in `experiment` (created if missing) holding `folder`'s files
        under `artifact_path`: how imported models get the same layout as trained ones."""
        found = self._client.get_experiment_by_name(experiment)
        if found is not None:
            experiment_id = found.experiment_id
        else:
            try:
                experiment_id = self._client.create_experiment(experiment)
            except MlflowException as e:
                if e.error_code != "RESOURCE_ALREADY_EXISTS":  # another replica won the race
                    raise
                experiment_id = self._client.get_experiment_by_name(experiment).experiment_id
        run = self._client.create_run(experiment_id, tags=dict(tags))
        run_id = run.info.run_id
        try:
            self._client.log_artifacts(run_id, str(folder), artifact_path)
        except BaseException:
            self._client.set_terminated(run_id, status="FAILED")
            raise
        self._client.set_terminated(run_id)
        return RunRecord(run_id, run.info.artifact_uri, {})

    @_mlflow_errors
    def download_run_file(self, run_id: str, path: str, dst_dir: Path) -> Path:
        """Download one run artifact; NotFound when the run or the file does not exist."""
        local = mlflow.artifacts.download_artifacts(
            run_id=run_id, artifact_path=path, dst_path=str(dst_dir), tracking_uri=self._uri
        )
        return self._file(local, path)

    def download_version_file(self, version: VersionRecord, path: str, dst_dir: Path) -> Path:
        if version.run_id and version.artifact_path:
            return self.download_run_file(
                version.run_id, f"{version.artifact_path}/{path}", dst_dir
            )
        return self._download_uri(f"{version.source}/{path}", path, dst_dir)

    @_mlflow_errors
    def _download_uri(self, uri: str, path: str, dst_dir: Path) -> Path:
        local = mlflow.artifacts.download_artifacts(
            artifact_uri=uri, dst_path=str(dst_dir), tracking_uri=self._uri
        )
        return self._file(local, path)

    @staticmethod
    def _file(local: str, path: str) -> Path:
        result = Path(local)
        if not result.is_file():
            raise NotFound(f"artifact {path!r} is not a file")
        return result

    @_mlflow_errors
    def create_version(
        self,
        *,
        name: str,
        source: str,
        run_id: str,
        tags: Mapping[str, str],
        description: str,
    ) -> VersionRecord:
        """Create the registered model if missing, then a version; wait until READY."""
        try:
            self._client.create_registered_model(name)
        except MlflowException as e:
            if e.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
        mv = self._client.create_model_version(
            name,
            source=source,
            run_id=run_id,
            tags=dict(tags),
            description=description or None,
            await_creation_for=0,  # polled below, within our own bound
        )
        return self._await_ready(name, str(mv.version))

    def _await_ready(self, name: str, version: str) -> VersionRecord:
        deadline = time.monotonic() + self._ready_timeout
        delay = 0.05
        while True:
            record = self.get_version(name, version)
            if record.status == "READY":
                return record
            if record.status == "FAILED_REGISTRATION":
                raise FailedPrecondition(f"MLflow failed to register {name} v{version}")
            if time.monotonic() + delay > deadline:
                raise DeadlineExceeded(
                    f"{name} v{version} still {record.status} after {self._ready_timeout:g} s"
                )
            time.sleep(delay)
            delay = min(delay * 2, 1.0)

    @_mlflow_errors
    def set_alias(self, name: str, alias: str, version: str) -> None:
        self._client.set_registered_model_alias(name, alias, version)

    @_mlflow_errors
    def delete_alias(self, name: str, alias: str) -> None:
        self._client.delete_registered_model_alias(name, alias)

    @_mlflow_errors
    def set_model_tag(self, name: str, key: str, value: str) -> None:
        self._client.set_registered_model_tag(name, key, value)

    @_mlflow_errors
    def set_version_tag(self, name: str, version: str, key: str, value: str) -> None:
        self._client.set_model_version_tag(name, version, key, value)

    @staticmethod
    def _pages(search: Callable[..., Any], *filters: str) -> Iterable[Any]:
        token = None
        while True:
            page = search(*filters, max_results=_PAGE, page_token=token)
            yield from page
            token = page.token
            if not token:
                return

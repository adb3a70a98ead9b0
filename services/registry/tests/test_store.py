from __future__ import annotations

import time
from pathlib import Path

import pytest

from kloop_client.local import free_port
from kloop_core.errors import InvalidArgument, NotFound, Unavailable
from kloop_registry.store import TAG_SHA256, MlflowStore, configure_http

from .mlflow_runs import log_keyword_run


@pytest.fixture(scope="module")
def store(mlflow_uri: str) -> MlflowStore:
    configure_http(timeout_seconds=5, max_retries=0)
    return MlflowStore(mlflow_uri)


def test_create_version_creates_the_model_and_reads_back(
    store: MlflowStore, mlflow_uri: str, tmp_path: Path, model_name: str
) -> None:
    run = log_keyword_run(mlflow_uri, tmp_path, low=0.2, high=0.8)
    info = store.get_run(run.run_id)
    created = store.create_version(
        name=model_name,
        source=f"{info.artifact_uri}/model",
        run_id=run.run_id,
        tags={TAG_SHA256: run.sha256, "kloop.artifact_path": "model", "team": "nlp"},
        description="first",
    )
    assert (created.version, created.status, created.sha256) == ("1", "READY", run.sha256)
    assert created.artifact_uri == f"runs:/{run.run_id}/model"
    assert created.description == "first"
    store.set_version_tag(model_name, "1", "kloop.audit.000000001", "{}")
    store.set_alias(model_name, "production", "1")

    again = store.get_version(model_name, "1")
    assert again.aliases == ("production",)
    assert "kloop.audit.000000001" not in again.tags and again.tags["team"] == "nlp"
    assert store.version_by_alias(model_name, "production").version == "1"
    assert store.version_for_run(model_name, run.run_id) == again
    assert [v.version for v in store.list_versions(model_name)] == ["1"]
    # Other tests register byte-identical keyword models: ours is among the matches.
    same_bytes = {(v.name, v.version) for v in store.versions_with_sha256(run.sha256)}
    assert (model_name, "1") in same_bytes
    model = store.get_model(model_name)
    assert (model.aliases, model.latest_version) == ({"production": "1"}, "1")
    assert model_name in {m.name for m in store.list_models()}

    store.delete_alias(model_name, "production")
    assert store.get_model(model_name).aliases == {}


def test_missing_things_are_not_found(
    store: MlflowStore, mlflow_uri: str, tmp_path: Path, model_name: str
) -> None:
    with pytest.raises(NotFound):
        store.get_model(model_name)
    with pytest.raises(NotFound):
        store.list_versions(model_name)
    with pytest.raises(NotFound):
        store.version_by_alias(model_name, "production")
    with pytest.raises(NotFound):
        store.get_run("0" * 32)
    run = log_keyword_run(mlflow_uri, tmp_path, low=0.3, high=0.7)
    with pytest.raises(NotFound):
        store.download_run_file(run.run_id, "model/absent.onnx", tmp_path)
    info = store.get_run(run.run_id)
    store.create_version(
        name=model_name, source=f"{info.artifact_uri}/model", run_id=run.run_id, tags={},
        description="",
    )  # fmt: skip
    with pytest.raises(NotFound, match="has no alias"):
        store.version_by_alias(model_name, "canary")
    with pytest.raises(NotFound):
        store.get_version(model_name, "7")
    with pytest.raises(NotFound):
        store.set_alias(model_name, "canary", "7")
    assert store.version_for_run(model_name, "f" * 32) is None


def test_filter_values_cannot_inject(store: MlflowStore) -> None:
    with pytest.raises(InvalidArgument):
        store.version_for_run("x' or name != '", "r")


def test_dead_mlflow_is_unavailable_fast() -> None:
    configure_http(timeout_seconds=5, max_retries=0)
    dead = MlflowStore(f"http://127.0.0.1:{free_port()}")
    started = time.monotonic()
    with pytest.raises(Unavailable, match="MLflow is unreachable"):
        dead.ping()
    with pytest.raises(Unavailable):
        dead.get_version("m", "1")
    assert time.monotonic() - started < 5

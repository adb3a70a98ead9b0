"""Domain rules that are easiest to see below the gRPC layer."""

from __future__ import annotations

from pathlib import Path

import pytest
from redis import Redis

from kloop_core.errors import InvalidArgument, Unavailable
from kloop_registry.service import (
    RegisterCommand,
    check_alias,
    check_name,
    check_relative_path,
    check_sha256,
    check_version,
)
from kloop_registry.settings import RegistrySettings

from .factories import make_registry
from .mlflow_runs import log_keyword_run


@pytest.mark.parametrize("alias", ["production", "canary", "challenger", "shadow-2", "a_b"])
def test_good_aliases(alias: str) -> None:
    assert check_alias(alias) == alias


@pytest.mark.parametrize("alias", ["Production", "2nd", "latest", "v3", "a b", "a" * 64, "é"])
def test_bad_aliases(alias: str) -> None:
    with pytest.raises(InvalidArgument):
        check_alias(alias)


def test_defaults_and_other_checks() -> None:
    assert check_alias("", default="production") == "production"
    assert check_relative_path("", default="model.onnx") == "model.onnx"
    assert check_relative_path("sub//x.json", default="") == "sub/x.json"
    assert check_sha256("AB" * 32) == "ab" * 32
    for bad in ("/etc/passwd", "a/../../b", "..", "a\\b"):
        with pytest.raises(InvalidArgument):
            check_relative_path(bad, default="x")
    for call, value in [(check_name, ""), (check_name, "a'b"), (check_version, "0")]:
        with pytest.raises(InvalidArgument):
            call(value)


def test_failed_event_publish_is_reported_and_a_retry_repairs_it(
    settings: RegistrySettings, redis_url: str, mlflow_uri: str, tmp_path: Path, model_name: str
) -> None:
    stream = f"kloop:test-broken:{model_name}"
    registry = make_registry(settings.model_copy(update={"events_stream": stream}))
    run = log_keyword_run(mlflow_uri, tmp_path, low=0.2, high=0.8)
    registry.register_version(
        RegisterCommand(name=model_name, run_id=run.run_id, sha256=run.sha256)
    )
    client = Redis.from_url(redis_url)
    client.delete(stream)
    client.set(stream, "not a stream")  # every XADD now fails (WRONGTYPE)

    with pytest.raises(Unavailable, match="applied and recorded in MLflow") as info:
        registry.set_alias(model_name, "production", "1", actor="ci")
    assert "retry the call" in str(info.value)
    assert registry.resolve_alias(model_name, "production").version == "1"
    assert [e.action.value for e in registry.history(model_name)] == ["alias_set"]

    client.delete(stream)
    again = registry.set_alias(model_name, "production", "1", actor="ci")
    assert again.entry is None  # no second audit entry for the same move ...
    (entry,) = client.xrange(stream)  # ... but the event watchers missed is out now
    assert entry[1][b"kind"] == b"alias_set" and entry[1][b"version"] == b"1"

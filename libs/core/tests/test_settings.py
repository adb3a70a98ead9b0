from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import SecretStr
from pydantic_settings import SettingsConfigDict

from kloop_core.settings import Port, ServiceSettings, load_settings, redacted_dict


class TrainingSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="KLOOP_TRAINING_")
    grpc_port: Port = 17051
    http_port: int = 17081  # plain int: the base class still checks the range
    mlflow_password: SecretStr | None = None


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.startswith("KLOOP_TRAINING_"):
            monkeypatch.delenv(name)


def test_defaults_and_env(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = load_settings(TrainingSettings)
    assert (settings.grpc_port, settings.http_port, settings.log_level) == (17051, 17081, "INFO")
    assert settings.redis_url.get_secret_value() == "redis://127.0.0.1:16379/0"
    assert settings.otlp_endpoint is None

    monkeypatch.setenv("KLOOP_TRAINING_GRPC_PORT", "18000")
    monkeypatch.setenv("KLOOP_TRAINING_LOG_LEVEL", "debug")
    monkeypatch.setenv("KLOOP_TRAINING_OTLP_ENDPOINT", "")
    monkeypatch.setenv("KLOOP_TRAINING_SHUTDOWN_GRACE_SECONDS", "2.5")
    settings = load_settings(TrainingSettings)
    assert settings.grpc_port == 18000 and settings.log_level == "DEBUG"
    assert settings.otlp_endpoint is None and settings.shutdown_grace_seconds == 2.5


def test_overrides_win_over_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KLOOP_TRAINING_GRPC_PORT", "18000")
    assert load_settings(TrainingSettings, grpc_port=0).grpc_port == 0


def test_errors_name_the_env_var_and_exit_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("KLOOP_TRAINING_GRPC_PORT", "not-a-port")
    monkeypatch.setenv("KLOOP_TRAINING_HTTP_PORT", "70000")
    monkeypatch.setenv("KLOOP_TRAINING_LOG_FORMAT", "xml")
    monkeypatch.setenv("KLOOP_TRAINING_MLFLOW_PASSWORD", "pw-in-env")
    with pytest.raises(SystemExit) as info:
        load_settings(TrainingSettings)
    assert info.value.code == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 3
    assert "KLOOP_TRAINING_GRPC_PORT: Input should be a valid integer" in err
    assert "KLOOP_TRAINING_HTTP_PORT: port must be between 0 and 65535" in err
    assert "KLOOP_TRAINING_LOG_FORMAT: Input should be 'json' or 'console'" in err
    assert "not-a-port" not in err  # values are never printed: they may be secrets


def test_a_real_process_exits_2_with_a_clear_message() -> None:
    code = textwrap.dedent(
        """
        from pydantic_settings import SettingsConfigDict
        from kloop_core.settings import ServiceSettings, load_settings

        class S(ServiceSettings):
            model_config = SettingsConfigDict(env_prefix="KLOOP_X_")
            grpc_port: int = 1
            http_port: int = 2

        load_settings(S)
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        env={"KLOOP_X_GRPC_MAX_WORKERS": "0", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "KLOOP_X_GRPC_MAX_WORKERS: Input should be greater than or equal to 1"
    )


def test_secrets_hidden_in_repr_str_and_redacted_dict(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KLOOP_TRAINING_REDIS_URL", "redis://:hunter2@redis.kloop:6379/1")
    monkeypatch.setenv("KLOOP_TRAINING_MLFLOW_PASSWORD", "mlflow-pw")
    monkeypatch.setenv("KLOOP_TRAINING_OTLP_ENDPOINT", "http://user:otelpw@collector:4317")
    settings = load_settings(TrainingSettings)
    for text in (repr(settings), str(settings), str(redacted_dict(settings))):
        assert "hunter2" not in text and "mlflow-pw" not in text
    shown = redacted_dict(settings)
    assert shown["redis_url"] == "redis://:***@redis.kloop:6379/1"  # host stays visible
    assert shown["mlflow_password"] == "**********"
    assert shown["otlp_endpoint"] == "http://user:***@collector:4317"
    assert shown["grpc_port"] == 17051


@given(st.text(alphabet=st.characters(blacklist_categories=("Cs", "Zs", "Cc")), min_size=6))
def test_no_url_password_survives_redaction(password: str) -> None:
    url = f"redis://:{password}@redis.kloop:6379/0"
    shown = redacted_dict(TrainingSettings(redis_url=SecretStr(url)))["redis_url"]
    assert password not in shown or password in "redis://:***@redis.kloop:6379/0"

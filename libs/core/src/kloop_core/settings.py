"""Typed service settings from environment variables (`KLOOP_<SERVICE>_...`).

Each service subclasses `ServiceSettings`, sets its own `env_prefix` and defaults, and
loads it once with `load_settings`, which turns validation errors into one line per bad
variable and exit status 2 instead of a traceback.
"""

from __future__ import annotations

import sys
from typing import Annotated, Any, Literal, TypeVar

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict, SettingsError

from kloop_core.redaction import redact

# 0 means "pick a free port" (tests); real deployments set 1..65535.
Port = Annotated[int, Field(ge=0, le=65535)]

S = TypeVar("S", bound="ServiceSettings")


class ServiceSettings(BaseSettings):
    """Fields every kloop service has. Subclasses set `env_prefix` and port defaults:

    class TrainingSettings(ServiceSettings):
        model_config = SettingsConfigDict(env_prefix="KLOOP_TRAINING_")
        grpc_port: Port = 17051
        http_port: Port = 17081
    """

    model_config = SettingsConfigDict(
        env_prefix="KLOOP_",
        extra="ignore",
        case_sensitive=False,
        validate_default=True,
        env_nested_delimiter="__",
    )

    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["json", "console"] = "json"
    otlp_endpoint: str | None = None
    grpc_host: str = "127.0.0.1"
    grpc_port: Port
    http_host: str = "127.0.0.1"
    http_port: Port
    grpc_max_workers: int = Field(default=16, ge=1, le=1024)
    # None = unbounded queue; a number makes an overloaded server answer
    # RESOURCE_EXHAUSTED at once instead of queueing callers into their deadlines.
    grpc_max_concurrent_rpcs: int | None = Field(default=None, ge=1)
    shutdown_grace_seconds: float = Field(default=10.0, ge=0)
    redis_url: SecretStr = SecretStr("redis://127.0.0.1:16379/0")

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_level(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value

    @field_validator("grpc_port", "http_port", mode="after")
    @classmethod
    def _port_range(cls, value: int) -> int:
        # Repeated here (not only in `Port`) so a subclass that redeclares the field as
        # a plain `int` keeps the range check.
        if not 0 <= value <= 65535:
            raise ValueError("port must be between 0 and 65535")
        return value

    @field_validator("otlp_endpoint", mode="before")
    @classmethod
    def _empty_is_none(cls, value: Any) -> Any:
        return None if isinstance(value, str) and not value.strip() else value


def env_var_name(cls: type[BaseSettings], loc: tuple[int | str, ...]) -> str:
    """The environment variable that feeds the field at `loc` of a settings class."""
    if not loc:
        return f"{cls.model_config.get('env_prefix', '')}*"
    field_name = str(loc[0])
    field = cls.model_fields.get(field_name)
    alias = field.validation_alias if field is not None else None
    name = (
        alias
        if isinstance(alias, str)
        else (f"{cls.model_config.get('env_prefix', '')}{field_name}")
    )
    delimiter = cls.model_config.get("env_nested_delimiter") or "__"
    rest = [str(part) for part in loc[1:]]
    return delimiter.join([name, *rest]).upper()


def load_settings(cls: type[S], **overrides: Any) -> S:
    """Build settings from the environment (+ explicit overrides) or exit with status 2.

    Each problem goes to stderr as `ENV_VAR: message`; the offending value is never
    printed because it may be a secret.
    """
    try:
        return cls(**overrides)
    except ValidationError as exc:
        lines = [
            f"{env_var_name(cls, tuple(err['loc']))}: {err['msg'].removeprefix('Value error, ')}"
            for err in exc.errors()
        ]
    except SettingsError as exc:  # e.g. a complex field whose env value is not JSON
        lines = [f"{cls.__name__}: {exc}"]
    for line in lines:
        print(line, file=sys.stderr)
    raise SystemExit(2)


def redacted_dict(settings: BaseSettings) -> dict[str, Any]:
    """The effective settings for a start-up log line, with every secret masked."""
    # python mode keeps SecretStr objects, so `redact` can tell secrets from text.
    redacted: dict[str, Any] = redact(settings.model_dump(mode="python"))
    return redacted

"""The local platform: which processes `kloop up` starts, on which ports, in which order."""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path

import grpc
from pydantic_settings import BaseSettings, SettingsConfigDict

from kloop.vectorstore.v1 import vectorstore_pb2 as vs
from kloop.vectorstore.v1 import vectorstore_pb2_grpc as vs_grpc
from kloop_client.local import (
    LocalPlatformError,
    ManagedProcess,
    http_ok,
    recorded_processes,
    start_mlflow,
    start_process,
    start_redis,
    stop_recorded,
)
from kloop_client.sdk import KloopClient
from kloop_core.api_keys import SCOPES, ApiKeyStore
from kloop_core.redis import create_redis


class LocalPlatformSettings(BaseSettings):
    """Ports and state directory of the local platform (env: KLOOP_LOCAL_*)."""

    model_config = SettingsConfigDict(env_prefix="KLOOP_LOCAL_", extra="ignore")

    home: Path = Path(".kloop")
    redis_port: int = 16379
    mlflow_port: int = 15000
    registry_grpc_port: int = 50151
    registry_http_port: int = 18151
    training_grpc_port: int = 50152
    training_http_port: int = 18152
    inference_grpc_port: int = 50153
    inference_http_port: int = 18153
    gateway_grpc_port: int = 50154
    gateway_http_port: int = 18154
    drift_monitor_grpc_port: int = 50156
    drift_monitor_http_port: int = 18156
    worker_http_port: int = 18158
    vectorstore_grpc_port: int = 50157
    vectorstore_http_port: int = 18157
    rag_grpc_port: int = 50159
    rag_http_port: int = 18159
    start_timeout_seconds: float = 120.0
    # The models the inference service serves (its production, canary and challenger).
    models: list[str] = ["sentiment"]
    # The text embedder `make embedder` exports: imported as model `embedder_model` and
    # served for the vector store when this directory holds it (relative: to the
    # directory `kloop up` runs in).
    embedder_dir: Path = Path("build/embedder")
    embedder_model: str = "embedder"
    # The document collection `kloop docs add` and `kloop ask` use by default, created
    # with the embedder (all-MiniLM-L6-v2: 384 dimensions, cosine).
    docs_collection: str = "docs"
    embedder_dimension: int = 384
    # The loop, sized for one machine's traffic (the services' own defaults are sized
    # for production traffic): drift windows of this many events, a retrain after this
    # many drifted windows in a row, and a canary that answers this share of requests
    # for at least this long and this many events before it is judged.
    drift_window_events: int = 200
    drift_trigger_windows: int = 2
    canary_percent: float = 30.0
    canary_window_seconds: float = 15.0
    canary_min_events: int = 50


@dataclass(frozen=True)
class ServiceSpec:
    name: str
    grpc_port: int
    http_port: int
    env: dict[str, str] = field(default_factory=dict)
    # What `kloop up` waits for. Services that are only ready once a production model
    # exists (inference, and the gateway in front of it) are waited for as live.
    ready_path: str = "/readyz"
    # The service's program and arguments when the process is not `kloop-<name>`.
    program: str = ""
    args: tuple[str, ...] = ()

    @property
    def script(self) -> str:
        # The console script uv installed next to this interpreter.
        program = f"kloop-{self.program or self.name}"
        found = Path(sys.executable).parent / program
        return str(found) if found.exists() else (shutil.which(program) or str(found))

    @property
    def argv(self) -> list[str]:
        return [self.script, *self.args]

    def ready(self) -> Callable[[], bool]:
        if not self.http_port:
            # No HTTP endpoint (Celery beat): up once it has written its schedule file.
            schedule = Path(self.env["BEAT_SCHEDULE_FILE"])
            return lambda: any(schedule.parent.glob(schedule.name + "*"))
        return partial(http_ok, f"http://127.0.0.1:{self.http_port}{self.ready_path}")

    def process_env(self) -> dict[str, str]:
        prefix = f"KLOOP_{(self.program or self.name).upper().replace('-', '_')}_"
        ports = {"GRPC_PORT": str(self.grpc_port), "HTTP_PORT": str(self.http_port)}
        return {prefix + k: v for k, v in {**ports, **self.env}.items()}


@dataclass(frozen=True)
class Endpoints:
    """What `kloop up` wrote to <home>/platform.json, read by every other command."""

    redis_url: str
    mlflow_url: str
    registry_addr: str
    training_addr: str
    registry_http: str
    training_http: str
    inference_addr: str = ""
    inference_http: str = ""
    gateway_addr: str = ""
    gateway_http: str = ""
    drift_monitor_http: str = ""
    worker_metrics: str = ""
    vectorstore_addr: str = ""
    rag_http: str = ""

    def save(self, home: Path) -> None:
        (home / "platform.json").write_text(json.dumps(asdict(self), indent=2))

    @classmethod
    def load(cls, home: Path) -> Endpoints | None:
        try:
            return cls(**json.loads((home / "platform.json").read_text()))
        except (OSError, ValueError, TypeError):
            return None

    @classmethod
    def from_settings(cls, s: LocalPlatformSettings) -> Endpoints:
        return cls(
            redis_url=f"redis://127.0.0.1:{s.redis_port}/0",
            mlflow_url=f"http://127.0.0.1:{s.mlflow_port}",
            registry_addr=f"127.0.0.1:{s.registry_grpc_port}",
            training_addr=f"127.0.0.1:{s.training_grpc_port}",
            registry_http=f"http://127.0.0.1:{s.registry_http_port}",
            training_http=f"http://127.0.0.1:{s.training_http_port}",
            inference_addr=f"127.0.0.1:{s.inference_grpc_port}",
            inference_http=f"http://127.0.0.1:{s.inference_http_port}",
            gateway_addr=f"127.0.0.1:{s.gateway_grpc_port}",
            gateway_http=f"http://127.0.0.1:{s.gateway_http_port}",
            drift_monitor_http=f"http://127.0.0.1:{s.drift_monitor_http_port}",
            worker_metrics=f"http://127.0.0.1:{s.worker_http_port}/metrics",
            vectorstore_addr=f"127.0.0.1:{s.vectorstore_grpc_port}",
            rag_http=f"http://127.0.0.1:{s.rag_http_port}",
        )


def services(s: LocalPlatformSettings, ep: Endpoints) -> list[ServiceSpec]:
    """Every implemented service, in start order (dependencies first)."""
    common = {"REDIS_URL": ep.redis_url, "MLFLOW_TRACKING_URI": ep.mlflow_url}
    home = s.home.resolve()
    worker_env = {
        "REDIS_URL": ep.redis_url,
        "INFERENCE_ADDR": ep.inference_addr,
        "TRAINING_ADDR": ep.training_addr,
        "REGISTRY_ADDR": ep.registry_addr,
        "DRIFT_MONITOR_URL": ep.drift_monitor_http,
        "RETRAIN_DATA_DIR": str(home / "retrain-data"),
        "BEAT_SCHEDULE_FILE": str(home / "celerybeat-schedule"),
        "CANARY_WINDOW_SECONDS": str(s.canary_window_seconds),
        "CANARY_MIN_EVENTS": str(s.canary_min_events),
        "CANARY_POLL_SECONDS": "1",
        # Every service shares this machine's cores: the p95 of a few dozen requests
        # swings by milliseconds, so latency fails a canary only if far off.
        "LATENCY_SLACK_SECONDS": "0.05",
        "VECTORSTORE_ADDR": ep.vectorstore_addr,
    }
    return [
        ServiceSpec("registry", s.registry_grpc_port, s.registry_http_port, dict(common)),
        ServiceSpec(
            "training",
            s.training_grpc_port,
            s.training_http_port,
            {**common, "REGISTRY_ADDR": ep.registry_addr},
        ),
        ServiceSpec(
            "inference",
            s.inference_grpc_port,
            s.inference_http_port,
            {
                "REGISTRY_ADDR": ep.registry_addr,
                "CACHE_DIR": str(s.home.resolve() / "models"),
                "MODELS": json.dumps({m: ["production", "canary", "challenger"] for m in s.models}),
                **({"EMBEDDING_MODEL": s.embedder_model} if embedder_built(s) else {}),
            },
            ready_path="/livez",
        ),
        ServiceSpec(
            "gateway",
            s.gateway_grpc_port,
            s.gateway_http_port,
            # Raw text in prediction events: this is the user's own machine, and the drift
            # monitor then measures OOV rate and token drift too.
            {
                "REDIS_URL": ep.redis_url,
                "INFERENCE_ADDR": ep.inference_addr,
                "EVENT_INCLUDE_TEXT": "true",
                "CANARY_PERCENT": str(s.canary_percent),
                "DOCUMENTS_VECTORSTORE_ADDR": ep.vectorstore_addr,
            },
            ready_path="/livez",
        ),
        ServiceSpec(
            "drift-monitor",
            s.drift_monitor_grpc_port,
            s.drift_monitor_http_port,
            {
                **common,
                "REGISTRY_ADDR": ep.registry_addr,
                "WINDOW_EVENTS": str(s.drift_window_events),
                "MIN_WINDOW_EVENTS": str(min(100, s.drift_window_events)),
                "TRIGGER_WINDOWS": str(s.drift_trigger_windows),
            },
        ),
        ServiceSpec("worker", 0, s.worker_http_port, worker_env, ready_path="/metrics"),
        ServiceSpec("worker-beat", 0, 0, worker_env, program="worker", args=("beat",)),
        ServiceSpec(
            "vectorstore",
            s.vectorstore_grpc_port,
            s.vectorstore_http_port,
            {"DATA_DIR": str(home / "vectorstore"), "INFERENCE_ADDR": ep.inference_addr},
        ),
        ServiceSpec(
            "rag",
            s.rag_grpc_port,
            s.rag_http_port,
            # Generative with the user's ANTHROPIC_API_KEY, else extractive answers.
            {
                "REDIS_URL": ep.redis_url,
                "VECTORSTORE_ADDR": ep.vectorstore_addr,
                **_anthropic_key(),
            },
        ),
    ]


def embedder_built(s: LocalPlatformSettings) -> bool:
    return (s.embedder_dir / "model.onnx").is_file() and (
        s.embedder_dir / "tokenizer.json"
    ).is_file()


def _anthropic_key() -> dict[str, str]:
    key = os.environ.get("KLOOP_RAG_ANTHROPIC_API_KEY") or os.environ.get("ANTHROPIC_API_KEY")
    return {"ANTHROPIC_API_KEY": key} if key else {}


def platform_up(s: LocalPlatformSettings, log: Callable[[str], None] = print) -> Endpoints:
    """Start Redis, MLflow and every service; on any failure stop what was started."""
    home = s.home.resolve()
    home.mkdir(parents=True, exist_ok=True)
    ep = Endpoints.from_settings(s)
    running = {p.name for p in recorded_processes(home) if p.alive()}
    expected = {"redis", "mlflow", *(svc.name for svc in services(s, ep))}
    if running == expected and Endpoints.load(home) == ep:
        log("platform already up")
        return ep
    stop_recorded(home)  # leftovers of a crashed CLI or a half-started platform
    started: list[ManagedProcess] = []
    try:
        log(f"starting redis on {ep.redis_url}")
        started.append(start_redis(s.redis_port, home))
        log(f"starting mlflow on {ep.mlflow_url} (about 10 s)")
        started.append(start_mlflow(s.mlflow_port, home))
        for svc in services(s, ep):
            ports = [
                f"{kind} :{port}"
                for kind, port in (("gRPC", svc.grpc_port), ("HTTP", svc.http_port))
                if port
            ]
            log(f"starting {svc.name}" + (f" ({', '.join(ports)})" if ports else ""))
            started.append(
                start_process(
                    svc.name,
                    svc.argv,
                    state_dir=home,
                    env=svc.process_env(),
                    ready=svc.ready(),
                    timeout=s.start_timeout_seconds,
                )
            )
    except (LocalPlatformError, OSError) as e:
        for proc in reversed(started):
            proc.stop()
        raise LocalPlatformError(str(e)) from e
    ep.save(home)
    ensure_api_key(home, ep)
    if embedder_built(s):
        ensure_embedder(s, ep, log)
    return ep


def ensure_embedder(s: LocalPlatformSettings, ep: Endpoints, log: Callable[[str], None]) -> None:
    """Register the exported embedder (once: the registry returns the existing version
    for the same files) with alias production, which the inference service then loads."""
    with KloopClient(ep.training_addr, ep.registry_addr) as client:
        imported = client.import_model(
            s.embedder_model,
            s.embedder_dir / "model.onnx",
            tokenizer_path=s.embedder_dir / "tokenizer.json",
            alias="production",
            reason="kloop up: the exported all-MiniLM-L6-v2 embedder",
        )
    log(f"embedder: {s.embedder_model} v{imported.version.version} (production)")
    with grpc.insecure_channel(ep.vectorstore_addr) as channel:
        store = vs_grpc.VectorStoreServiceStub(channel)
        try:
            store.CreateCollection(
                vs.CreateCollectionRequest(
                    name=s.docs_collection,
                    vector_size=s.embedder_dimension,
                    distance=vs.COSINE,
                    embedding_model=s.embedder_model,
                ),
                timeout=30,
            )
            log(f"collection {s.docs_collection!r} created (embedded by {s.embedder_model})")
        except grpc.RpcError as e:
            if e.code() != grpc.StatusCode.ALREADY_EXISTS:
                raise LocalPlatformError(
                    f"creating collection {s.docs_collection!r}: {e.details()}"
                ) from e


def api_key_path(home: Path) -> Path:
    return home / "api-key"


def local_api_key(s: LocalPlatformSettings) -> str:
    """KLOOP_API_KEY, else the local platform's own key ("" when there is none)."""
    key_file = api_key_path(s.home.resolve())
    return os.environ.get("KLOOP_API_KEY") or (
        key_file.read_text().strip() if key_file.exists() else ""
    )


def current_endpoints(s: LocalPlatformSettings) -> Endpoints:
    """Where the running platform is (its platform.json), else where it would be."""
    return Endpoints.load(s.home.resolve()) or Endpoints.from_settings(s)


def ensure_api_key(home: Path, ep: Endpoints) -> str:
    """The local platform's all-scopes gateway key, created once, kept mode 0600."""
    path = api_key_path(home)
    if path.exists():
        return path.read_text().strip()
    client = create_redis(ep.redis_url)
    try:
        _, token = ApiKeyStore(client).create(SCOPES, name="local platform (kloop up)")
    finally:
        client.close()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    return token


def platform_down(s: LocalPlatformSettings) -> list[str]:
    home = s.home.resolve()
    stopped = stop_recorded(home)
    (home / "platform.json").unlink(missing_ok=True)
    return stopped

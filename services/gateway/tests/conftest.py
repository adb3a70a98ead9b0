"""Gateway test fixtures: the real inference server (kloop_inference, in a thread) serving
real kloop_model ONNX exports, a real gateway (uvicorn + gRPC, in a thread) and the real
Redis of the root conftest.

The only test double is where models come from: `MemorySource` is an in-memory
registry (the inference server's ModelSource protocol) whose aliases a test can move;
a move is also published on the model-event stream exactly as the registry does.
"""

from __future__ import annotations

import asyncio
import hashlib
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from datetime import UTC, datetime
from typing import Any, TypeVar

import grpc
import httpx
import pytest
import redis
import uvicorn

from kloop.oip.v2 import grpc_predict_v2_pb2 as oip
from kloop.oip.v2 import grpc_predict_v2_pb2_grpc as oip_grpc
from kloop_core.api_keys import ApiKeyStore
from kloop_gateway.app import create_app
from kloop_gateway.service import Gateway
from kloop_gateway.settings import GatewaySettings
from kloop_inference.server import InferenceServer
from kloop_inference.settings import InferenceSettings
from kloop_inference.sync import AliasEvent, ModelRef
from kloop_model import SentimentClassifier
from kloop_model.dataset import builtin_dataset
from kloop_model.onnx_export import export_onnx

T = TypeVar("T")

MODEL_EVENTS = "kloop:model-events"
# sentiment: production v1, canary v3 (similar), challenger v2 (opposite answers).
# moving: production moves between versions in tests. solo: production only.
SERVED = {
    "sentiment": ["production", "canary", "challenger"],
    "moving": ["production"],
    "solo": ["production", "canary", "challenger"],
}
INITIAL_ALIASES = {
    ("sentiment", "production"): "1",
    ("sentiment", "canary"): "3",
    ("sentiment", "challenger"): "2",
    ("moving", "production"): "1",
    ("solo", "production"): "1",
}


@pytest.fixture(scope="session")
def artifacts() -> dict[str, bytes]:
    """Version -> model.onnx: v1 trained normally, v2 on flipped labels (disagrees with
    v1 everywhere), v3 on half the data (close to v1, other scores)."""
    data = builtin_dataset()
    flipped = [1 - label for label in data.labels]
    half = len(data.texts) // 2
    models = {
        "1": SentimentClassifier().fit(data.texts, data.labels),
        "2": SentimentClassifier().fit(data.texts, flipped),
        "3": SentimentClassifier().fit(data.texts[:half], data.labels[:half]),
    }
    return {version: export_onnx(m).SerializeToString() for version, m in models.items()}


class MemorySource:
    """Test-only model source for the real inference server: aliases in a dict."""

    def __init__(self, artifacts: dict[str, bytes], aliases: dict[tuple[str, str], str]) -> None:
        self._artifacts = artifacts
        self._aliases = dict(aliases)
        self._watchers: list[asyncio.Queue[AliasEvent]] = []
        self.loop: asyncio.AbstractEventLoop | None = None
        self._events = 0

    async def resolve(self, name: str, alias: str) -> ModelRef | None:
        version = self._aliases.get((name, alias))
        if version is None:
            return None
        return ModelRef(name, version, hashlib.sha256(self._artifacts[version]).hexdigest())

    async def fetch(self, ref: ModelRef) -> bytes:
        return self._artifacts[ref.version]

    async def watch(self, after_event_id: str) -> AsyncIterator[AliasEvent]:
        self.loop = asyncio.get_running_loop()
        queue: asyncio.Queue[AliasEvent] = asyncio.Queue()
        self._watchers.append(queue)
        try:
            while True:
                yield await queue.get()
        finally:
            self._watchers.remove(queue)

    async def close(self) -> None:
        return None

    def set_alias(self, name: str, alias: str, version: str | None) -> None:
        """Move (None: delete) an alias and tell the server, from any thread."""
        if version is None:
            self._aliases.pop((name, alias), None)
        else:
            self._aliases[(name, alias)] = version
        self._events += 1
        event = AliasEvent(str(self._events), name, alias)
        assert self.loop is not None
        for queue in self._watchers:
            self.loop.call_soon_threadsafe(queue.put_nowait, event)


class LoopThread:
    """An asyncio loop in a thread, for servers that blocking test code calls."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self._thread.start()

    def call(self, make: Callable[[], Coroutine[Any, Any, T]], timeout: float = 60) -> T:
        return asyncio.run_coroutine_threadsafe(make(), self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)


class InferenceThread:
    def __init__(self, source: MemorySource) -> None:
        self.source = source
        self._loop = LoopThread("inference")
        settings = InferenceSettings(
            grpc_port=0,
            http_port=0,
            models=SERVED,
            startup_wait_seconds=5.0,
            shutdown_grace_seconds=0.5,
            drain_timeout_seconds=2.0,
            log_level="WARNING",
        )
        self.server = self._loop.call(lambda: _start_inference(settings, source))
        self.addr = f"127.0.0.1:{self.server.grpc_port}"
        self.channel = grpc.insecure_channel(self.addr)
        self.stub = oip_grpc.GRPCInferenceServiceStub(self.channel)
        wait_until(lambda: self.stub.ServerReady(oip.ServerReadyRequest(), timeout=1).ready)

    def serves(self, name: str, alias: str) -> str:
        """The version inference answers with for `alias` right now."""
        request = oip.ModelInferRequest(
            model_name=name,
            model_version=alias,
            inputs=[
                oip.ModelInferRequest.InferInputTensor(
                    name="text",
                    datatype="BYTES",
                    shape=[1],
                    contents=oip.InferTensorContents(bytes_contents=[b"probe"]),
                )
            ],
        )
        return str(self.stub.ModelInfer(request, timeout=2).model_version)

    def move(self, name: str, alias: str, version: str, events: redis.Redis | None) -> None:
        """What a promotion does: the registry publishes the event, inference loads the
        version and swaps. Returns once inference answers with `version`."""
        if events is not None:
            publish_alias(events, name, alias, version)
        self.source.set_alias(name, alias, version)
        wait_until(lambda: self.serves(name, alias) == version)

    def close(self) -> None:
        self.channel.close()
        self._loop.call(self.server.stop)
        self._loop.close()


async def _start_inference(settings: InferenceSettings, source: MemorySource) -> InferenceServer:
    server = InferenceServer(settings, source)
    await server.start()
    return server


def publish_alias(events: redis.Redis, name: str, alias: str, version: str) -> None:
    """A registry `alias_set` model event (the registry's field layout)."""
    events.xadd(
        MODEL_EVENTS,
        {
            "kind": "alias_set",
            "name": name,
            "alias": alias,
            "version": version,
            "time": datetime.now(UTC).isoformat(),
        },
    )


def wait_until(check: Callable[[], Any], timeout: float = 15.0, interval: float = 0.02) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        try:
            result = check()
            if result:
                return result
        except Exception:
            if time.monotonic() > deadline:
                raise
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(interval)


class GatewayThread:
    """The gateway app on uvicorn (HTTP) + its gRPC server, on a loop in a thread."""

    def __init__(self, settings: GatewaySettings) -> None:
        self.settings = settings
        self._loop = LoopThread("gateway")
        self.app = create_app(settings)
        # IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY only on sockets that say so,
        # and without it every response waits ~40 ms for the client's delayed ACK.
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        listener.bind(("127.0.0.1", 0))
        self.port = listener.getsockname()[1]
        config = uvicorn.Config(
            self.app, log_config=None, access_log=False, lifespan="on", timeout_graceful_shutdown=1
        )
        self._server = uvicorn.Server(config)
        self._serving = asyncio.run_coroutine_threadsafe(
            self._server.serve(sockets=[listener]), self._loop.loop
        )
        wait_until(lambda: self._server.started or self._serving.done())
        if self._serving.done():
            self._serving.result()  # raises what stopped it
        self.url = f"http://127.0.0.1:{self.port}"
        self.grpc_addr = f"127.0.0.1:{self.app.state.grpc.grpc_port}"

    @property
    def gateway(self) -> Gateway:
        gateway: Gateway = self.app.state.gateway
        return gateway

    def call(self, make: Callable[[], Coroutine[Any, Any, T]]) -> T:
        """Run a coroutine on the gateway's loop (to reach its internals)."""
        return self._loop.call(make)

    def flush(self) -> None:
        """Wait until every accepted prediction is in Redis."""
        assert self.call(lambda: self.gateway._writer.flush(within=10.0))

    def close(self) -> None:
        self._server.should_exit = True
        self._serving.result(30)
        self._loop.close()


def gateway_settings(redis_url: str, inference_addr: str, **overrides: Any) -> GatewaySettings:
    values: dict[str, Any] = {
        "grpc_port": 0,
        "http_port": 0,
        "redis_url": redis_url,
        "inference_addr": inference_addr,
        "shutdown_grace_seconds": 1.0,
        "log_level": "WARNING",
        **overrides,
    }
    return GatewaySettings(**values)


def redis_db(redis_url: str, db: int) -> str:
    """The same server, another database: gateways under test do not share keys."""
    return redis_url.rsplit("/", 1)[0] + f"/{db}"


# --- fixtures ---------------------------------------------------------------------


@pytest.fixture(scope="session")
def inference(artifacts: dict[str, bytes]) -> Iterator[InferenceThread]:
    running = InferenceThread(MemorySource(artifacts, INITIAL_ALIASES))
    yield running
    running.close()


@pytest.fixture(scope="session")
def gateway_redis_url(redis_url: str) -> str:
    return redis_db(redis_url, 3)


@pytest.fixture(scope="session")
def events_redis(gateway_redis_url: str) -> Iterator[redis.Redis]:
    """Where the registry would publish model events for the gateway under test."""
    client = redis.Redis.from_url(gateway_redis_url, decode_responses=True)
    client.flushdb()
    for (name, alias), version in INITIAL_ALIASES.items():
        publish_alias(client, name, alias, version)
    yield client
    client.close()


@pytest.fixture(scope="session")
def key_store(gateway_redis_url: str, events_redis: redis.Redis) -> Iterator[ApiKeyStore]:
    client = redis.Redis.from_url(gateway_redis_url)
    yield ApiKeyStore(client)
    client.close()


@pytest.fixture(scope="session")
def full_token(key_store: ApiKeyStore) -> str:
    """Every scope, a rate limit no test reaches."""
    _, token = key_store.create(
        ["predict", "feedback", "admin"], name="tests", rate_per_second=100_000, burst=100_000
    )
    return token


@pytest.fixture(scope="session")
def predict_token(key_store: ApiKeyStore) -> str:
    _, token = key_store.create(
        ["predict"], name="predict-only", rate_per_second=100_000, burst=100_000
    )
    return token


@pytest.fixture(scope="session")
def running_gateway(
    gateway_redis_url: str, inference: InferenceThread, events_redis: redis.Redis
) -> Iterator[GatewayThread]:
    running = GatewayThread(gateway_settings(gateway_redis_url, inference.addr))
    wait_until(lambda: running.gateway._aliases.connected)
    yield running
    running.close()


@pytest.fixture
def client(running_gateway: GatewayThread, full_token: str) -> Iterator[httpx.Client]:
    """HTTP client of the session gateway, authenticated with every scope."""
    with httpx.Client(
        base_url=running_gateway.url,
        headers={"Authorization": f"Bearer {full_token}"},
        timeout=10,
    ) as http:
        yield http


@pytest.fixture
def traffic(client: httpx.Client) -> Iterator[Callable[..., None]]:
    """Set a model's traffic policy for one test; the defaults come back afterwards."""
    touched: set[str] = set()

    def set_policy(model: str, **policy: Any) -> None:
        touched.add(model)
        response = client.put(f"/v1/models/{model}/traffic", json=policy)
        assert response.status_code == 200, response.text

    yield set_policy
    for model in touched:
        client.delete(f"/v1/models/{model}/traffic")

"""Inference test fixtures: real ONNX models, a real server on free ports in a thread."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import onnx
import pytest
import uvloop
from onnx import TensorProto, helper, numpy_helper

from kloop_inference.server import InferenceServer
from kloop_inference.settings import InferenceSettings
from kloop_inference.sync import ModelSource
from kloop_model import SentimentClassifier
from kloop_model.dataset import builtin_dataset
from kloop_model.onnx_export import export_onnx

T = TypeVar("T")


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    """Async tests (marked anyio) run on asyncio."""
    return "asyncio"


@pytest.fixture(scope="session")
def sentiment_model() -> SentimentClassifier:
    data = builtin_dataset()
    return SentimentClassifier().fit(data.texts, data.labels)


@pytest.fixture(scope="session")
def sentiment_onnx(sentiment_model: SentimentClassifier) -> bytes:
    return export_onnx(sentiment_model).SerializeToString()


def numeric_onnx() -> bytes:
    """`scaled` = 2 * `x` (FP32 [N, 3]); `total` = sum of `count` (INT64 [N]) rows kept;
    `flag` = not `on` (BOOL [N]): one model with several inputs, outputs and dtypes."""
    graph = helper.make_graph(
        [
            helper.make_node("Mul", ["x", "two"], ["scaled"]),
            helper.make_node("Add", ["count", "one"], ["total"]),
            helper.make_node("Not", ["on"], ["flag"]),
        ],
        "numeric",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3]),
            helper.make_tensor_value_info("count", TensorProto.INT64, ["N"]),
            helper.make_tensor_value_info("on", TensorProto.BOOL, ["N"]),
        ],
        [
            helper.make_tensor_value_info("scaled", TensorProto.FLOAT, ["N", 3]),
            helper.make_tensor_value_info("total", TensorProto.INT64, ["N"]),
            helper.make_tensor_value_info("flag", TensorProto.BOOL, ["N"]),
        ],
        initializer=[
            numpy_helper.from_array(np.array(2.0, dtype=np.float32), "two"),
            numpy_helper.from_array(np.array(1, dtype=np.int64), "one"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    return model.SerializeToString()


def write_repository(root: Path, models: dict[str, dict[str, bytes]]) -> Path:
    """`<root>/<name>/<version>/model.onnx` for LocalRepositorySource."""
    for name, versions in models.items():
        for version, data in versions.items():
            folder = root / name / version
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "model.onnx").write_bytes(data)
    return root


def make_settings(**overrides: Any) -> InferenceSettings:
    values: dict[str, Any] = {
        "grpc_port": 0,
        "http_port": 0,
        "models": {"sentiment": ["production"]},
        "startup_wait_seconds": 5.0,
        "shutdown_grace_seconds": 1.0,
        "drain_timeout_seconds": 5.0,
        "log_level": "WARNING",
        **overrides,
    }
    return InferenceSettings(**values)


class ServerThread:
    """An InferenceServer on its own uvloop in a thread, so that blocking clients
    (tritonclient, grpc, httpx) can call it from the test."""

    def __init__(self, settings: InferenceSettings, source: ModelSource | None = None) -> None:
        self._settings = settings
        self._source = source
        self._started = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="inference-server", daemon=True)
        self.loop: asyncio.AbstractEventLoop | None = None
        self.server: InferenceServer | None = None
        self._stop: asyncio.Event | None = None

    def __enter__(self) -> ServerThread:
        self._thread.start()
        self._started.wait(30)
        if self._error is not None:
            raise self._error
        return self

    def __exit__(self, *exc: object) -> None:
        assert self.loop is not None and self._stop is not None
        self.loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)

    def _run(self) -> None:
        uvloop.run(self._main())

    async def _main(self) -> None:
        self.loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        try:
            self.server = InferenceServer(self._settings, self._source)
            await self.server.start()
        except BaseException as error:
            self._error = error
            self._started.set()
            return
        self._started.set()
        await self._stop.wait()
        await self.server.stop()

    @property
    def http(self) -> str:
        assert self.server is not None
        return f"127.0.0.1:{self.server.http_port}"

    @property
    def grpc(self) -> str:
        assert self.server is not None
        return f"127.0.0.1:{self.server.grpc_port}"

    def call(self, make: Callable[[], Coroutine[Any, Any, T]]) -> T:
        """Run a coroutine on the server's loop and return its result."""
        assert self.loop is not None
        return asyncio.run_coroutine_threadsafe(make(), self.loop).result(30)

    def wait_ready(self, timeout: float = 30.0) -> None:
        assert self.server is not None
        server = self.server

        async def ready() -> None:
            async with asyncio.timeout(timeout):
                while not server.manager.ready:  # noqa: ASYNC110 - a test polls state
                    await asyncio.sleep(0.01)

        self.call(ready)


@pytest.fixture(scope="session")
def repository(tmp_path_factory: pytest.TempPathFactory, sentiment_onnx: bytes) -> Path:
    return write_repository(
        tmp_path_factory.mktemp("repository"),
        {"sentiment": {"1": sentiment_onnx}, "numeric": {"3": numeric_onnx()}},
    )


@pytest.fixture(scope="module")
def server(repository: Path) -> Iterator[ServerThread]:
    """sentiment (production = version 1) and numeric (production = version 3)."""
    settings = make_settings(
        model_repository=repository,
        models={"sentiment": ["production", "canary"], "numeric": ["production"]},
    )
    with ServerThread(settings) as running:
        running.wait_ready()
        yield running

"""Loading ONNX models and the table of what is served."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from kloop_core.errors import NotFound, Unavailable
from kloop_inference.models import (
    AliasState,
    LoadedModel,
    ModelLoadError,
    ModelManager,
    create_session,
    load_model,
    session_signature,
    warmup_feed,
)
from kloop_inference.tensors import InferRequest, RequestedOutput, Tensor, TensorSpec
from kloop_model import SentimentClassifier

from .conftest import make_settings, numeric_onnx

pytestmark = pytest.mark.anyio

TEXTS = ["I love this product, it is great!", "terrible, awful, bad", "", "Ünïcode ✓ words"]


class NullObserver:
    def batch_started(self, rows: int, requests: int) -> None: ...

    def request_queued(self, seconds: float) -> None: ...

    def pending_changed(self, delta: int) -> None: ...


@pytest.fixture(scope="module")
def executor() -> ThreadPoolExecutor:
    pool = ThreadPoolExecutor(1)
    yield pool
    pool.shutdown()


def load(
    data: bytes, executor: ThreadPoolExecutor, name: str = "sentiment", version: str = "1"
) -> LoadedModel:
    return load_model(
        name,
        version,
        f"sha-{version}",
        data,
        settings=make_settings(),
        executor=executor,
        observer=NullObserver(),
    )


def test_signatures_are_read_from_the_session(sentiment_onnx: bytes) -> None:
    sentiment = session_signature(create_session(sentiment_onnx, 1))
    assert sentiment.inputs == (TensorSpec("text", "BYTES", (-1,)),)
    assert sentiment.outputs == (TensorSpec("probability", "FP32", (-1,)),)
    assert sentiment.batchable
    numeric = session_signature(create_session(numeric_onnx(), 1))
    assert [(s.name, s.datatype, s.shape) for s in numeric.inputs] == [
        ("x", "FP32", (-1, 3)),
        ("count", "INT64", (-1,)),
        ("on", "BOOL", (-1,)),
    ]
    feed = warmup_feed(numeric, rows=4)
    assert {name: (a.shape, a.dtype.name) for name, a in feed.items()} == {
        "x": ((4, 3), "float32"),
        "count": ((4,), "int64"),
        "on": ((4,), "bool"),
    }


def test_garbage_is_not_a_model() -> None:
    with pytest.raises(ModelLoadError, match="onnxruntime cannot load the model"):
        create_session(b"not an onnx model", 1)


async def test_a_loaded_model_answers_like_the_numpy_model(
    sentiment_onnx: bytes, sentiment_model: SentimentClassifier, executor: ThreadPoolExecutor
) -> None:
    model = load(sentiment_onnx, executor)
    request = InferRequest([Tensor("text", "BYTES", np.array(TEXTS, dtype=object))], [])
    (output,) = await model.infer(request)
    assert (output.name, output.datatype) == ("probability", "FP32")
    np.testing.assert_allclose(output.data, sentiment_model.predict_proba(TEXTS), atol=1e-6)
    assert model.metadata(["1"])["inputs"] == [{"name": "text", "datatype": "BYTES", "shape": [-1]}]


async def test_requested_outputs_come_back_in_request_order(executor: ThreadPoolExecutor) -> None:
    model = load(numeric_onnx(), executor, name="numeric")
    request = InferRequest(
        [
            Tensor("x", "FP32", np.ones((2, 3), np.float32)),
            Tensor("count", "INT64", np.array([1, 2])),
            Tensor("on", "BOOL", np.array([True, False])),
        ],
        [RequestedOutput("flag"), RequestedOutput("total")],
    )
    outputs = await model.infer(request)
    assert [(o.name, o.data.tolist()) for o in outputs] == [
        ("flag", [False, True]),
        ("total", [2, 3]),
    ]


async def test_resolve_waits_for_a_loading_alias_then_serves_it(
    sentiment_onnx: bytes, executor: ThreadPoolExecutor
) -> None:
    manager = ModelManager({"sentiment": ["production", "canary"]})
    assert not manager.ready
    waiting = asyncio.create_task(manager.resolve("sentiment", "", wait=10))
    await asyncio.sleep(0.01)
    assert not waiting.done()
    model = load(sentiment_onnx, executor)
    manager.install("sentiment", "production", model)
    assert await waiting is model
    assert not manager.ready  # canary is still on its first load
    manager.mark_absent("sentiment", "canary")
    assert manager.ready
    assert manager.get("sentiment", "1") is model  # a version number works too
    assert manager.get("sentiment", "production") is model


async def test_resolve_explains_what_is_missing(
    sentiment_onnx: bytes, executor: ThreadPoolExecutor
) -> None:
    manager = ModelManager({"sentiment": ["production", "canary"]})
    with pytest.raises(
        NotFound, match="model 'other' is not served here; served models: sentiment"
    ):
        await manager.resolve("other", "", wait=1)
    with pytest.raises(Unavailable, match=r"model 'sentiment' \(production\) is still loading"):
        await manager.resolve("sentiment", "", wait=0.01)
    manager.install("sentiment", "production", load(sentiment_onnx, executor))
    manager.mark_absent("sentiment", "canary")
    with pytest.raises(NotFound, match="model 'sentiment' has no version under alias 'canary'"):
        await manager.resolve("sentiment", "canary", wait=1)
    with pytest.raises(
        NotFound,
        match=r"version '9' of model 'sentiment' is not served; served versions: 1 \(production\)",
    ):
        await manager.resolve("sentiment", "9", wait=1)
    manager.mark_failed("sentiment", "canary", "sha256 mismatch")
    with pytest.raises(Unavailable, match=r"\(canary\) failed to load: sha256 mismatch"):
        await manager.resolve("sentiment", "canary", wait=1)
    assert manager.ready  # a broken canary does not take production down


async def test_a_swap_is_atomic_and_the_old_version_drains(
    sentiment_onnx: bytes, executor: ThreadPoolExecutor
) -> None:
    manager = ModelManager({"sentiment": ["production", "canary"]}, drain_timeout=5)
    old, new = (
        load(sentiment_onnx, executor, version="1"),
        load(sentiment_onnx, executor, version="2"),
    )
    manager.install("sentiment", "production", old)
    manager.install("sentiment", "canary", old)  # shared by two aliases
    request = InferRequest([Tensor("text", "BYTES", np.array(["good"], dtype=object))], [])
    in_flight = asyncio.create_task(old.infer(request))
    manager.install("sentiment", "production", new)
    assert manager.get("sentiment", "") is new
    assert manager.get("sentiment", "canary") is old
    assert manager.versions("sentiment") == ["1", "2"]
    manager.install("sentiment", "canary", new)  # nothing uses version 1 now
    assert manager.get("sentiment", "1") is None
    assert (await in_flight)[0].data.shape == (1,)  # the old version finished its work
    await manager.wait_drained()
    assert manager.alias_state("sentiment", "canary") is AliasState.READY

"""The dynamic batcher, with a fake model, a fake clock and gates instead of sleeps."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest

from kloop_inference.batching import DynamicBatcher, Feed
from kloop_inference.tensors import TensorError

pytestmark = pytest.mark.anyio


class Recorder:
    def __init__(self) -> None:
        self.batches: list[tuple[int, int]] = []
        self.queue_times: list[float] = []
        self.pending = 0
        self.max_pending = 0

    def batch_started(self, rows: int, requests: int) -> None:
        self.batches.append((rows, requests))

    def request_queued(self, seconds: float) -> None:
        self.queue_times.append(seconds)

    def pending_changed(self, delta: int) -> None:
        self.pending += delta
        self.max_pending = max(self.max_pending, self.pending)


class FakeModel:
    """Doubles `x`; fails on a row equal to -1; can hold executions at a gate."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.gate.set()
        self.calls: list[int] = []

    def __call__(self, feed: Feed) -> Feed:
        self.gate.wait(10)
        x = feed["x"]
        self.calls.append(len(x))
        if (x == -1).any():
            raise ValueError("bad row")
        return {"y": x * 2}


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def make_batcher(
    model: Callable[[Feed], Feed],
    recorder: Recorder,
    executor: ThreadPoolExecutor | None,
    **overrides: Any,
) -> DynamicBatcher:
    options: dict[str, Any] = {
        "observer": recorder,
        "batchable": True,
        "max_batch_size": 64,
        "max_queue_delay": 0.0,
        "max_concurrent": 1,
        "executor": executor,
        "run_inline": lambda rows: executor is None,
        **overrides,
    }
    return DynamicBatcher(model, **options)


def feed(*values: float) -> Feed:
    return {"x": np.array(values, dtype=np.float32)}


@pytest.fixture
def executor() -> ThreadPoolExecutor:
    pool = ThreadPoolExecutor(2)
    yield pool
    pool.shutdown(wait=True, cancel_futures=True)


async def wait_until(condition: Callable[[], bool]) -> None:
    async with asyncio.timeout(10):
        while not condition():  # noqa: ASYNC110 - a test polls state
            await asyncio.sleep(0.001)


async def test_an_idle_request_runs_at_once_despite_a_long_queue_delay() -> None:
    recorder, clock = Recorder(), FakeClock()
    batcher = make_batcher(FakeModel(), recorder, None, max_queue_delay=3600.0, clock=clock)
    # With a 1 h queue delay this would hang if the idle request waited for company.
    result = await batcher.infer(feed(1.5))
    assert result["y"].tolist() == [3.0]
    assert recorder.batches == [(1, 1)]
    assert recorder.queue_times == [0.0]


async def test_requests_of_one_loop_turn_share_a_batch() -> None:
    recorder = Recorder()
    batcher = make_batcher(FakeModel(), recorder, None)
    results = await asyncio.gather(*(batcher.infer(feed(i)) for i in range(8)))
    assert [r["y"].tolist() for r in results] == [[2.0 * i] for i in range(8)]
    assert recorder.batches == [(8, 8)]


async def test_requests_arriving_while_a_batch_runs_form_the_next_one(
    executor: ThreadPoolExecutor,
) -> None:
    recorder, model, clock = Recorder(), FakeModel(), FakeClock()
    batcher = make_batcher(model, recorder, executor, max_batch_size=4, clock=clock)
    model.gate.clear()
    first = asyncio.create_task(batcher.infer(feed(0)))
    await wait_until(lambda: recorder.batches == [(1, 1)])
    rest = [asyncio.create_task(batcher.infer(feed(i, i))) for i in range(1, 6)]
    await wait_until(lambda: recorder.pending == 6)
    clock.now += 0.25
    model.gate.set()
    results = await asyncio.gather(first, *rest)
    assert [r["y"].tolist() for r in results] == [[0.0]] + [[2.0 * i] * 2 for i in range(1, 6)]
    # 2-row requests, at most 4 rows a batch: 1 | 2+2 | 2+2 | 2.
    assert recorder.batches == [(1, 1), (4, 2), (4, 2), (2, 1)]
    assert recorder.queue_times[:3] == [0.0, 0.25, 0.25]
    assert recorder.pending == 0


async def test_a_busy_model_waits_for_company_up_to_the_queue_delay(
    executor: ThreadPoolExecutor,
) -> None:
    recorder, model = Recorder(), FakeModel()
    batcher = make_batcher(model, recorder, executor, max_concurrent=2, max_queue_delay=0.05)
    model.gate.clear()
    first = asyncio.create_task(batcher.infer(feed(0)))
    await wait_until(lambda: len(recorder.batches) == 1)
    # A slot is free, but the model is busy: these two wait together for the delay.
    second = asyncio.create_task(batcher.infer(feed(1)))
    third = asyncio.create_task(batcher.infer(feed(2)))
    await wait_until(lambda: len(recorder.batches) == 2)
    model.gate.set()
    await asyncio.gather(first, second, third)
    assert recorder.batches == [(1, 1), (2, 2)]


async def test_without_queue_delay_a_free_slot_is_used_at_once(
    executor: ThreadPoolExecutor,
) -> None:
    recorder, model = Recorder(), FakeModel()
    batcher = make_batcher(model, recorder, executor, max_concurrent=2)
    model.gate.clear()
    first = asyncio.create_task(batcher.infer(feed(0)))
    await wait_until(lambda: len(recorder.batches) == 1)
    second = asyncio.create_task(batcher.infer(feed(1)))
    await wait_until(lambda: len(recorder.batches) == 2)
    model.gate.set()
    await asyncio.gather(first, second)
    assert recorder.batches == [(1, 1), (1, 1)]


async def test_one_bad_request_does_not_fail_its_batch() -> None:
    recorder, model = Recorder(), FakeModel()
    batcher = make_batcher(model, recorder, None)
    results = await asyncio.gather(
        batcher.infer(feed(1)),
        batcher.infer(feed(-1)),
        batcher.infer(feed(3)),
        return_exceptions=True,
    )
    assert results[0]["y"].tolist() == [2.0]
    assert isinstance(results[1], ValueError)
    assert results[2]["y"].tolist() == [6.0]
    assert model.calls == [3, 1, 1, 1]  # the batch, then each request alone


async def test_cancelled_requests_are_dropped_from_the_queue(
    executor: ThreadPoolExecutor,
) -> None:
    recorder, model = Recorder(), FakeModel()
    batcher = make_batcher(model, recorder, executor)
    model.gate.clear()
    first = asyncio.create_task(batcher.infer(feed(0)))
    await wait_until(lambda: len(recorder.batches) == 1)
    gone = asyncio.create_task(batcher.infer(feed(1)))
    kept = asyncio.create_task(batcher.infer(feed(2)))
    await wait_until(lambda: recorder.pending == 3)
    gone.cancel()
    model.gate.set()
    await asyncio.gather(first, kept)
    assert recorder.batches == [(1, 1), (1, 1)]
    assert recorder.pending == 0


async def test_only_requests_with_the_same_trailing_shape_are_stacked() -> None:
    recorder = Recorder()
    batcher = make_batcher(lambda f: {"y": f["x"] + 1}, recorder, None)
    wide, narrow = np.zeros((1, 3), np.float32), np.zeros((2, 2), np.float32)
    results = await asyncio.gather(
        batcher.infer({"x": wide}), batcher.infer({"x": narrow}), batcher.infer({"x": wide})
    )
    assert [r["y"].shape for r in results] == [(1, 3), (2, 2), (1, 3)]
    assert recorder.batches == [(2, 2), (2, 1)]


async def test_a_model_without_a_batch_axis_runs_requests_alone() -> None:
    recorder = Recorder()
    batcher = make_batcher(
        lambda f: {"y": f["x"].sum(keepdims=True)}, recorder, None, batchable=False
    )
    results = await asyncio.gather(batcher.infer(feed(1, 2)), batcher.infer(feed(3)))
    assert [r["y"].tolist() for r in results] == [[3.0], [3.0]]
    assert recorder.batches == [(1, 1), (1, 1)]


async def test_inputs_must_agree_on_rows() -> None:
    batcher = make_batcher(FakeModel(), Recorder(), None)
    with pytest.raises(TensorError, match="inputs must have the same number of rows"):
        await batcher.infer({"x": np.zeros(2), "z": np.zeros(3)})


async def test_drained_returns_once_in_flight_work_is_done(executor: ThreadPoolExecutor) -> None:
    recorder, model = Recorder(), FakeModel()
    batcher = make_batcher(model, recorder, executor)
    await batcher.drained()  # idle: at once
    model.gate.clear()
    running = asyncio.create_task(batcher.infer(feed(1)))
    await wait_until(lambda: len(recorder.batches) == 1)
    drained = asyncio.create_task(batcher.drained())
    await asyncio.sleep(0.01)
    assert not drained.done()
    model.gate.set()
    await asyncio.gather(running, drained)

"""Dynamic batching: concurrent requests for one model version run as one execution.

Policy (one batcher per loaded model version, all on the event loop):

- An idle model adds no timer delay: a request that finds nothing queued or running
  starts a batch after one more turn of the event loop, so requests that the loop reads
  from its sockets in that turn join it (under load this about doubles batch sizes:
  3.8 -> 7 rows with 8 concurrent HTTP clients, for the cost of one extra epoll call).
- Requests that arrive while the model is busy queue. When an execution slot frees, the
  next batch takes up to `max_batch_size` rows from the queue, in arrival order, among
  requests whose inputs can be stacked (same trailing dimensions).
- With `max_queue_delay` > 0, a busy model's queue also waits for more requests until it
  holds a full batch or its oldest request has waited that long.

Batches expected to be quick run on the event loop (a thread hand-off costs tens of
microseconds, and requests that arrive meanwhile simply form the next batch); big ones
run on an executor thread, where onnxruntime releases the GIL so the loop keeps parsing
requests in parallel. If a batch of several requests fails, each request runs
again alone, so one bad request cannot fail the others.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from kloop_inference.tensors import TensorError

Array = npt.NDArray[Any]
Feed = dict[str, Array]
Execute = Callable[[Feed], Feed]


class BatchObserver(Protocol):
    """Where a batcher reports what it does (metrics in the service, lists in tests)."""

    def batch_started(self, rows: int, requests: int) -> None: ...

    def request_queued(self, seconds: float) -> None: ...

    def pending_changed(self, delta: int) -> None: ...


@dataclass(slots=True)
class _Pending:
    feed: Feed
    rows: int
    stack_key: tuple[Any, ...]
    future: asyncio.Future[Feed]
    enqueued_at: float


class DynamicBatcher:
    def __init__(
        self,
        execute: Execute,
        *,
        observer: BatchObserver,
        batchable: bool,
        max_batch_size: int,
        max_queue_delay: float,
        max_concurrent: int,
        executor: Executor | None,
        run_inline: Callable[[int], bool],
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self._execute = execute
        self._observer = observer
        self._batchable = batchable
        self._max_batch_size = max_batch_size if batchable else 1
        self._max_queue_delay = max_queue_delay
        self._max_concurrent = max_concurrent
        self._executor = executor
        self._run_inline = run_inline
        self._clock = clock
        self._queue: deque[_Pending] = deque()
        self._running = 0
        self._start_pending = False
        self._timer: asyncio.TimerHandle | None = None
        self._idle = asyncio.Event()
        self._idle.set()

    async def infer(self, feed: Feed) -> Feed:
        """Run `feed` (one request's inputs) as part of a batch; its rows of the outputs."""
        rows = _rows(feed) if self._batchable else 1
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Feed] = loop.create_future()
        idle = self._running == 0 and not self._queue and not self._start_pending
        self._queue.append(
            _Pending(feed, rows, _stack_key(feed), future, self._clock()),
        )
        self._idle.clear()
        self._observer.pending_changed(1)
        try:
            if idle:
                self._start_soon(loop)
            else:
                self._schedule(loop)
            return await future
        finally:
            self._observer.pending_changed(-1)

    async def drained(self) -> None:
        """Return once nothing is queued or running."""
        await self._idle.wait()

    # --- scheduling (event loop only) -------------------------------------------------

    def _start_soon(self, loop: asyncio.AbstractEventLoop) -> None:
        self._start_pending = True
        # One more loop turn first (see the module docstring).
        loop.call_soon(loop.call_soon, self._start_batch)

    def _schedule(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._start_pending or self._running >= self._max_concurrent or not self._queue:
            return
        if self._max_queue_delay > 0 and not self._queue_full():
            waited = self._clock() - self._queue[0].enqueued_at
            if waited < self._max_queue_delay:
                if self._timer is None:
                    self._timer = loop.call_later(
                        self._max_queue_delay - waited, self._on_timer, loop
                    )
                return
        self._start_soon(loop)

    def _on_timer(self, loop: asyncio.AbstractEventLoop) -> None:
        self._timer = None
        if self._queue and not self._start_pending and self._running < self._max_concurrent:
            self._start_soon(loop)

    def _queue_full(self) -> bool:
        rows = 0
        for pending in self._queue:
            rows += pending.rows
            if rows >= self._max_batch_size:
                return True
        return False

    def _take_batch(self) -> list[_Pending]:
        """Up to max_batch_size rows of stackable requests, oldest first (a request
        bigger than that runs alone); cancelled requests are dropped."""
        batch: list[_Pending] = []
        skipped: list[_Pending] = []
        rows = 0
        while self._queue:
            pending = self._queue.popleft()
            if pending.future.done():
                continue
            if batch and pending.stack_key != batch[0].stack_key:
                skipped.append(pending)
                continue
            if batch and rows + pending.rows > self._max_batch_size:
                self._queue.appendleft(pending)
                break
            batch.append(pending)
            rows += pending.rows
            if rows >= self._max_batch_size:
                break
        self._queue.extendleft(reversed(skipped))
        return batch

    def _start_batch(self) -> None:
        self._start_pending = False
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        batch = self._take_batch()
        loop = asyncio.get_running_loop()
        if not batch:
            self._after_batch(loop)
            return
        now = self._clock()
        for pending in batch:
            self._observer.request_queued(now - pending.enqueued_at)
        rows = sum(pending.rows for pending in batch)
        self._observer.batch_started(rows, len(batch))
        self._running += 1
        if self._executor is None or self._run_inline(rows):
            self._deliver(batch, self._run(batch))
            self._running -= 1
            self._after_batch(loop)
            return
        done = loop.run_in_executor(self._executor, self._run, batch)
        done.add_done_callback(lambda finished: self._on_executed(batch, finished, loop))

    def _on_executed(
        self,
        batch: list[_Pending],
        finished: asyncio.Future[list[Feed | BaseException]],
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self._running -= 1
        outcome: list[Feed | BaseException]
        if finished.cancelled():
            outcome = [asyncio.CancelledError()] * len(batch)
        elif (error := finished.exception()) is not None:
            outcome = [error] * len(batch)
        else:
            outcome = finished.result()
        self._deliver(batch, outcome)
        self._after_batch(loop)

    def _after_batch(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._queue:
            self._schedule(loop)
        elif self._running == 0 and not self._start_pending:
            self._idle.set()

    @staticmethod
    def _deliver(batch: list[_Pending], outcome: list[Feed | BaseException]) -> None:
        for pending, result in zip(batch, outcome, strict=True):
            if pending.future.done():
                continue  # the caller went away
            if isinstance(result, BaseException):
                pending.future.set_exception(result)
            else:
                pending.future.set_result(result)

    # --- execution (event loop or executor thread) ------------------------------------

    def _run(self, batch: list[_Pending]) -> list[Feed | BaseException]:
        if len(batch) == 1:
            return [self._run_one(batch[0].feed)]
        rows = [pending.rows for pending in batch]
        stacked = {
            name: np.concatenate([pending.feed[name] for pending in batch])
            for name in batch[0].feed
        }
        try:
            return _split(self._execute(stacked), rows)
        except Exception:
            # One bad request (or outputs without a batch axis) must not fail the others.
            return [self._run_one(pending.feed) for pending in batch]

    def _run_one(self, feed: Feed) -> Feed | BaseException:
        try:
            return self._execute(feed)
        except Exception as error:
            return error


def _rows(feed: Feed) -> int:
    counts = {array.shape[0] if array.ndim else 1 for array in feed.values()}
    if len(counts) != 1:
        raise TensorError(
            "inputs must have the same number of rows (first dimension), got "
            + ", ".join(f"'{name}': {array.shape[:1]}" for name, array in feed.items())
        )
    return counts.pop()


def _stack_key(feed: Feed) -> tuple[Any, ...]:
    if len(feed) == 1:
        array = next(iter(feed.values()))
        return (array.shape[1:],)
    return tuple(sorted((name, array.shape[1:]) for name, array in feed.items()))


def _split(outputs: Feed, rows: list[int]) -> list[Feed | BaseException]:
    total = sum(rows)
    for name, array in outputs.items():
        if array.ndim == 0 or array.shape[0] != total:
            raise ValueError(f"output {name!r} has no batch axis of {total} rows")
    results: list[Feed | BaseException] = []
    start = 0
    for count in rows:
        end = start + count
        results.append({name: array[start:end] for name, array in outputs.items()})
        start = end
    return results

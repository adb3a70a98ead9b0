"""ModelSync against an in-memory source: first loads, events, failures, reconnects."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor

import pytest

from kloop_inference.models import AliasState, LoadedModel, ModelManager, load_model
from kloop_inference.sync import AliasEvent, ArtifactError, ModelRef, ModelSync

from .conftest import make_settings
from .test_models import NullObserver

pytestmark = pytest.mark.anyio


class MemorySource:
    """Aliases and artifacts in dicts; events pushed by the test; a watch that can break."""

    def __init__(self, artifacts: dict[str, bytes]) -> None:
        self.artifacts = artifacts  # version -> model bytes
        self.aliases: dict[tuple[str, str], str] = {}
        self.corrupt: set[str] = set()
        self.events: asyncio.Queue[AliasEvent | Exception] = asyncio.Queue()
        self.watch_calls: list[str] = []
        self.fetches: list[str] = []
        self.published = 0

    def point(self, name: str, alias: str, version: str | None) -> None:
        if version is None:
            self.aliases.pop((name, alias), None)
        else:
            self.aliases[(name, alias)] = version
        self.published += 1
        self.events.put_nowait(AliasEvent(f"{self.published}-0", name, alias))

    async def resolve(self, name: str, alias: str) -> ModelRef | None:
        version = self.aliases.get((name, alias))
        if version is None:
            return None
        return ModelRef(name, version, hashlib.sha256(self.artifacts[version]).hexdigest())

    async def fetch(self, ref: ModelRef) -> bytes:
        self.fetches.append(ref.version)
        if ref.version in self.corrupt:
            raise ArtifactError(f"version {ref.version}: sha256 mismatch")
        return self.artifacts[ref.version]

    async def watch(self, after_event_id: str) -> AsyncIterator[AliasEvent]:
        self.watch_calls.append(after_event_id)
        while True:
            event = await self.events.get()
            if isinstance(event, Exception):
                raise event
            yield event

    async def close(self) -> None:
        return None


@pytest.fixture(scope="module")
def executor() -> ThreadPoolExecutor:
    pool = ThreadPoolExecutor(1)
    yield pool
    pool.shutdown()


async def eventually(condition: Callable[[], bool]) -> None:
    async with asyncio.timeout(20):
        while not condition():  # noqa: ASYNC110 - a test polls state
            await asyncio.sleep(0.005)


def start_sync(
    source: MemorySource, aliases: list[str], executor: ThreadPoolExecutor
) -> tuple[ModelManager, ModelSync]:
    manager = ModelManager({"sentiment": aliases}, drain_timeout=5)
    settings = make_settings()

    def load(ref: ModelRef, data: bytes) -> LoadedModel:
        return load_model(
            ref.name,
            ref.version,
            ref.sha256,
            data,
            settings=settings,
            executor=executor,
            observer=NullObserver(),
        )

    sync = ModelSync(manager, source, load, retry_initial_delay=0.01, retry_max_delay=0.05)
    sync.start()
    return manager, sync


def version_of(manager: ModelManager, alias: str) -> str | None:
    model = manager.current("sentiment", alias)
    return model.version if model is not None else None


async def test_first_load_then_events_move_aliases(
    sentiment_onnx: bytes, executor: ThreadPoolExecutor
) -> None:
    source = MemorySource({"1": sentiment_onnx, "2": sentiment_onnx})
    source.aliases[("sentiment", "production")] = "1"
    manager, sync = start_sync(source, ["production", "canary"], executor)
    try:
        await eventually(lambda: manager.ready)
        assert manager.alias_state("sentiment", "canary") is AliasState.ABSENT
        source.point("sentiment", "canary", "2")
        await eventually(lambda: version_of(manager, "canary") == "2")
        source.point("sentiment", "production", "2")  # version 2 is loaded: shared, no fetch
        await eventually(lambda: version_of(manager, "production") == "2")
        assert source.fetches == ["1", "2"]
        source.point("sentiment", "canary", None)
        await eventually(lambda: manager.alias_state("sentiment", "canary") is AliasState.ABSENT)
    finally:
        await sync.stop()


async def test_a_corrupt_artifact_fails_then_recovers_with_retries(
    sentiment_onnx: bytes, executor: ThreadPoolExecutor
) -> None:
    source = MemorySource({"1": sentiment_onnx})
    source.aliases[("sentiment", "production")] = "1"
    source.corrupt.add("1")
    manager, sync = start_sync(source, ["production"], executor)
    try:
        await eventually(
            lambda: manager.alias_state("sentiment", "production") is AliasState.FAILED
        )
        assert not manager.ready
        source.corrupt.clear()
        await eventually(lambda: manager.ready)
        assert source.fetches.count("1") >= 2
    finally:
        await sync.stop()


async def test_a_broken_event_stream_reconnects_after_the_last_event_and_resyncs(
    sentiment_onnx: bytes, executor: ThreadPoolExecutor
) -> None:
    source = MemorySource({"1": sentiment_onnx, "2": sentiment_onnx})
    source.aliases[("sentiment", "production")] = "1"
    manager, sync = start_sync(source, ["production"], executor)
    try:
        await eventually(lambda: manager.ready)
        source.point("sentiment", "production", "2")
        await eventually(lambda: version_of(manager, "production") == "2")
        source.events.put_nowait(ConnectionError("registry went away"))
        # Changed while disconnected, and no event for it: the resync after reconnecting
        # finds it anyway.
        source.aliases[("sentiment", "production")] = "1"
        await eventually(lambda: len(source.watch_calls) == 2)
        assert source.watch_calls == ["", "1-0"]
        await eventually(lambda: version_of(manager, "production") == "1")
    finally:
        await sync.stop()

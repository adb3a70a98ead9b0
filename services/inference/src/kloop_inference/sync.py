"""Keep the served models in step with their source (the registry, or a local folder).

Level-triggered: an event only says "(model, alias) may have changed"; the sync task then
asks the source what the alias points at now and converges to it (download, verify,
load, warm up, swap). Missed, duplicated or reordered events are therefore harmless, and
after every reconnect (and every `resync_interval`) all aliases are checked again.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Protocol

from kloop_core.logging import get_logger
from kloop_inference.models import LoadedModel, ModelLoadError, ModelManager

log = get_logger(__name__)


@dataclass(frozen=True, slots=True)
class ModelRef:
    """A version to serve, as the source names it."""

    name: str
    version: str
    sha256: str
    # sha256 of the version's tokenizer.json: set only for text-embedding models.
    tokenizer_sha256: str = ""


@dataclass(frozen=True, slots=True)
class AliasEvent:
    event_id: str
    name: str
    alias: str


class ArtifactError(Exception):
    """An artifact that failed verification (digest, size): never served."""


class ModelSource(Protocol):
    async def resolve(self, name: str, alias: str) -> ModelRef | None:
        """What `alias` points at, or None when the source has no such alias."""

    async def fetch(self, ref: ModelRef) -> bytes:
        """The model.onnx bytes of `ref`, verified against its sha256."""

    async def fetch_tokenizer(self, ref: ModelRef) -> bytes:
        """The tokenizer.json bytes of `ref`, verified against its tokenizer_sha256
        (only asked for when that is set)."""

    def watch(self, after_event_id: str) -> AsyncIterator[AliasEvent]:
        """Alias events after `after_event_id` ("" = from now on), until the stream
        breaks; raises on connection errors."""

    async def close(self) -> None: ...


class Loader(Protocol):
    def __call__(
        self, ref: ModelRef, model_bytes: bytes, tokenizer_json: bytes | None = None, /
    ) -> LoadedModel:
        """A warm model; `tokenizer_json` is passed only for text-embedding models."""


class ModelSync:
    def __init__(
        self,
        manager: ModelManager,
        source: ModelSource,
        load: Loader,
        *,
        retry_initial_delay: float = 0.2,
        retry_max_delay: float = 5.0,
        resync_interval: float = 60.0,
    ) -> None:
        self._manager = manager
        self._source = source
        self._load = load
        self._retry_initial_delay = retry_initial_delay
        self._retry_max_delay = retry_max_delay
        self._resync_interval = resync_interval
        self._dirty: set[tuple[str, str]] = set()
        self._wake = asyncio.Event()
        self._failures: dict[tuple[str, str], int] = {}
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self.check_all()
        self._tasks = [
            asyncio.create_task(self._sync_forever(), name="model-sync"),
            asyncio.create_task(self._follow_forever(), name="model-watch"),
            asyncio.create_task(self._resync_forever(), name="model-resync"),
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._source.close()

    def check(self, name: str, alias: str) -> None:
        self._dirty.add((name, alias))
        self._wake.set()

    def check_all(self) -> None:
        for name, aliases in self._manager.configured.items():
            for alias in aliases:
                self.check(name, alias)

    # --- converging ------------------------------------------------------------------

    async def _sync_forever(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            pending, self._dirty = self._dirty, set()
            for name, alias in sorted(pending):
                await self._sync_one(name, alias)

    async def _sync_one(self, name: str, alias: str) -> None:
        key = (name, alias)
        try:
            ref = await self._source.resolve(name, alias)
            if ref is None:
                self._manager.mark_absent(name, alias)
            else:
                await self._converge(alias, ref)
        except asyncio.CancelledError:
            raise
        except Exception as error:
            failures = self._failures.get(key, 0) + 1
            self._failures[key] = failures
            delay = min(self._retry_max_delay, self._retry_initial_delay * 2 ** (failures - 1))
            log.warning(
                "model sync failed; retrying",
                model=name,
                alias=alias,
                error=f"{type(error).__name__}: {error}",
                retry_in_seconds=round(delay, 2),
            )
            # A broken artifact is reported to callers; an unreachable source is not an
            # answer yet, so first loads keep waiting for it.
            if isinstance(error, ArtifactError | ModelLoadError):
                self._manager.mark_failed(name, alias, str(error))
            asyncio.get_running_loop().call_later(delay, self.check, name, alias)
        else:
            self._failures.pop(key, None)

    async def _converge(self, alias: str, ref: ModelRef) -> None:
        current = self._manager.current(ref.name, alias)
        if current is not None and (current.version, current.sha256) == (ref.version, ref.sha256):
            return
        model = self._manager.find_version(ref.name, ref.version, ref.sha256)
        if model is None:
            data = await self._source.fetch(ref)
            if ref.tokenizer_sha256:
                tokenizer = await self._source.fetch_tokenizer(ref)
                model = await asyncio.to_thread(self._load, ref, data, tokenizer)
            else:
                model = await asyncio.to_thread(self._load, ref, data)
        self._manager.install(ref.name, alias, model)
        log.info(
            "alias now served",
            model=ref.name,
            alias=alias,
            version=ref.version,
            previous=current.version if current is not None else None,
        )

    # --- following events ------------------------------------------------------------

    async def _follow_forever(self) -> None:
        delay = self._retry_initial_delay
        after = ""
        connected_before = False
        while True:
            try:
                stream = self._source.watch(after)
                if connected_before:
                    self.check_all()  # events may have been lost while disconnected
                connected_before = True
                async for event in stream:
                    delay = self._retry_initial_delay
                    after = event.event_id or after
                    if (event.name, event.alias) in self._manager.alias_keys:
                        self.check(event.name, event.alias)
                log.info("model event stream ended; reconnecting")
            except asyncio.CancelledError:
                raise
            except Exception as error:
                log.warning(
                    "model event stream failed; reconnecting",
                    error=f"{type(error).__name__}: {error}",
                    retry_in_seconds=round(delay, 2),
                )
            await asyncio.sleep(delay * (1 + random.random() / 2))
            delay = min(self._retry_max_delay, delay * 2)

    async def _resync_forever(self) -> None:
        while True:
            await asyncio.sleep(self._resync_interval)
            self.check_all()

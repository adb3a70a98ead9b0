"""The registry as a model source: resolve aliases, download artifacts by digest into a
local cache (verified before use), follow model events. All calls have deadlines; the
event stream is the only long-lived call."""

from __future__ import annotations

import asyncio
import hashlib
import os
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import grpc

from kloop.registry.v1 import registry_pb2 as pb
from kloop.registry.v1 import registry_pb2_grpc
from kloop_core.resilience import CHANNEL_OPTIONS
from kloop_inference.sync import AliasEvent, ArtifactError, ModelRef

_ALIAS_EVENTS = frozenset({"alias_set", "alias_deleted"})


class RegistryModelSource:
    def __init__(self, target: str, cache_dir: Path, *, timeout: float) -> None:
        self._channel = grpc.aio.insecure_channel(target, options=list(CHANNEL_OPTIONS))
        self._stub = registry_pb2_grpc.RegistryServiceStub(self._channel)
        self._cache_dir = cache_dir
        self._timeout = timeout

    async def resolve(self, name: str, alias: str) -> ModelRef | None:
        try:
            version = await self._stub.ResolveAlias(
                pb.ResolveAliasRequest(name=name, alias=alias), timeout=self._timeout
            )
        except grpc.aio.AioRpcError as error:
            if error.code() == grpc.StatusCode.NOT_FOUND:
                return None
            raise
        if not version.sha256:
            raise ArtifactError(f"{name} version {version.version} has no sha256")
        return ModelRef(name=name, version=version.version, sha256=version.sha256)

    async def fetch(self, ref: ModelRef) -> bytes:
        cached = self._cache_dir / f"{ref.sha256}.onnx"
        data = await asyncio.to_thread(_read_verified, cached, ref.sha256)
        if data is not None:
            return data
        chunks: list[bytes] = []
        digest = hashlib.sha256()
        call = self._stub.DownloadArtifact(
            pb.DownloadArtifactRequest(sha256=ref.sha256), timeout=self._timeout
        )
        async for chunk in call:
            chunks.append(chunk.data)
            digest.update(chunk.data)
        data = b"".join(chunks)
        if digest.hexdigest() != ref.sha256:
            raise ArtifactError(
                f"{ref.name} version {ref.version}: downloaded {len(data)} bytes with sha256 "
                f"{digest.hexdigest()}, the registry says {ref.sha256}"
            )
        await asyncio.to_thread(_write_atomically, cached, data)
        return data

    async def watch(self, after_event_id: str) -> AsyncIterator[AliasEvent]:
        # No deadline: the stream lasts as long as the server; keepalive pings detect a
        # dead peer.
        call = self._stub.WatchModels(pb.WatchModelsRequest(after_event_id=after_event_id))
        try:
            async for event in call:
                if event.kind in _ALIAS_EVENTS:
                    yield AliasEvent(event.event_id, event.name, event.alias)
        finally:
            call.cancel()

    async def close(self) -> None:
        await self._channel.close()


def _read_verified(path: Path, sha256: str) -> bytes | None:
    """The cached file if it is intact; a corrupt one is removed."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    if hashlib.sha256(data).hexdigest() == sha256:
        return data
    path.unlink(missing_ok=True)
    return None


def _write_atomically(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=".download-", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(data)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise

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
# Set by the registry on versions imported with a tokenizer (text-embedding models).
TAG_TOKENIZER_SHA256 = "kloop.tokenizer_sha256"
TOKENIZER_FILE = "tokenizer.json"


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
        return ModelRef(
            name=name,
            version=version.version,
            sha256=version.sha256,
            tokenizer_sha256=version.tags.get(TAG_TOKENIZER_SHA256, ""),
        )

    async def fetch(self, ref: ModelRef) -> bytes:
        return await self._fetch(
            ref, pb.DownloadArtifactRequest(sha256=ref.sha256), ref.sha256, "model.onnx", ".onnx"
        )

    async def fetch_tokenizer(self, ref: ModelRef) -> bytes:
        # By version and path: a tokenizer is a companion file, not a served artifact.
        request = pb.DownloadArtifactRequest(
            name=ref.name, version=ref.version, path=TOKENIZER_FILE
        )
        return await self._fetch(ref, request, ref.tokenizer_sha256, TOKENIZER_FILE, ".json")

    async def _fetch(
        self,
        ref: ModelRef,
        request: pb.DownloadArtifactRequest,
        sha256: str,
        what: str,
        suffix: str,
    ) -> bytes:
        """A file by digest from the local cache, else from the registry, verified."""
        cached = self._cache_dir / f"{sha256}{suffix}"
        data = await asyncio.to_thread(_read_verified, cached, sha256)
        if data is not None:
            return data
        chunks: list[bytes] = []
        digest = hashlib.sha256()
        call = self._stub.DownloadArtifact(request, timeout=self._timeout)
        async for chunk in call:
            chunks.append(chunk.data)
            digest.update(chunk.data)
        data = b"".join(chunks)
        if digest.hexdigest() != sha256:
            raise ArtifactError(
                f"{ref.name} version {ref.version} {what}: downloaded {len(data)} bytes with "
                f"sha256 {digest.hexdigest()}, the registry says {sha256}"
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

"""A local model folder as a model source, for development and benchmarks (no registry):
`<root>/<name>/<version>/model.onnx`, with a `tokenizer.json` beside it for a
text-embedding model. The highest numeric version is `production`; other aliases do not
exist; nothing changes while the server runs."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

from kloop_inference.settings import DEFAULT_ALIAS
from kloop_inference.sync import AliasEvent, ArtifactError, ModelRef

MODEL_FILE = "model.onnx"
TOKENIZER_FILE = "tokenizer.json"


class LocalRepositorySource:
    def __init__(self, root: Path) -> None:
        self._root = root

    async def resolve(self, name: str, alias: str) -> ModelRef | None:
        if alias != DEFAULT_ALIAS:
            return None
        versions = [
            path.parent.name
            for path in (self._root / name).glob(f"*/{MODEL_FILE}")
            if path.parent.name.isdigit()
        ]
        if not versions:
            return None
        version = max(versions, key=int)
        data = await asyncio.to_thread(self._path(name, version).read_bytes)
        tokenizer = self._path(name, version, TOKENIZER_FILE)
        tokenizer_sha256 = ""
        if tokenizer.is_file():
            tokenizer_bytes = await asyncio.to_thread(tokenizer.read_bytes)
            tokenizer_sha256 = hashlib.sha256(tokenizer_bytes).hexdigest()
        return ModelRef(name, version, hashlib.sha256(data).hexdigest(), tokenizer_sha256)

    async def fetch(self, ref: ModelRef) -> bytes:
        return await self._read(self._path(ref.name, ref.version), ref.sha256)

    async def fetch_tokenizer(self, ref: ModelRef) -> bytes:
        path = self._path(ref.name, ref.version, TOKENIZER_FILE)
        return await self._read(path, ref.tokenizer_sha256)

    @staticmethod
    async def _read(path: Path, sha256: str) -> bytes:
        data = await asyncio.to_thread(path.read_bytes)
        if hashlib.sha256(data).hexdigest() != sha256:
            raise ArtifactError(f"{path} changed while loading")
        return data

    async def watch(self, after_event_id: str) -> AsyncIterator[AliasEvent]:
        await asyncio.Event().wait()  # a folder sends no events
        yield AliasEvent("", "", "")  # pragma: no cover - makes this an async generator

    async def close(self) -> None:
        return None

    def _path(self, name: str, version: str, file: str = MODEL_FILE) -> Path:
        return self._root / name / version / file

"""What the HTTP and gRPC front ends share: find the model a request names, run it,
describe the server and its models."""

from __future__ import annotations

from typing import Any

from kloop_core.errors import NotFound
from kloop_core.metrics import service_version
from kloop_inference.models import LoadedModel, ModelManager
from kloop_inference.settings import InferenceSettings

SERVER_NAME = "kloop-inference"
EXTENSIONS = ["binary_tensor_data"]


class InferenceService:
    def __init__(self, manager: ModelManager, settings: InferenceSettings) -> None:
        self.manager = manager
        self._startup_wait = settings.startup_wait_seconds
        self._version = service_version("inference")

    async def model(self, name: str, version: str) -> LoadedModel:
        """The model for `name` at `version` (number or alias; "" = production), waiting
        (bounded) while it loads. NotFound / Unavailable otherwise."""
        model = self.manager.get(name, version)
        if model is None:
            model = await self.manager.resolve(name, version, self._startup_wait)
        return model

    @property
    def ready(self) -> bool:
        return self.manager.ready

    def model_ready(self, name: str, version: str) -> bool:
        if name not in self.manager.configured:
            raise NotFound(f"model '{name}' is not served here")
        return self.manager.get(name, version) is not None

    def server_metadata(self) -> dict[str, Any]:
        return {"name": SERVER_NAME, "version": self._version, "extensions": EXTENSIONS}

    async def model_metadata(self, name: str, version: str) -> dict[str, Any]:
        model = await self.model(name, version)
        return model.metadata(self.manager.versions(name))

"""Entry point (`kloop-vectorstore`): wires settings, the storage backend and the
inference-server embedder into a gRPC service run by kloop_core (health, reflection,
ops HTTP /livez /readyz /metrics, tracing, SIGTERM)."""

from __future__ import annotations

from kloop_core.grpc_server import GrpcApp, run_service
from kloop_core.settings import load_settings
from kloop_vectorstore.backends.base import VectorBackend
from kloop_vectorstore.backends.embedded import EmbeddedBackend
from kloop_vectorstore.backends.qdrant_server import QdrantServerBackend
from kloop_vectorstore.embedder import InferenceEmbedder
from kloop_vectorstore.grpc_server import SERVICE_NAME, add_to_server
from kloop_vectorstore.service import VectorStore
from kloop_vectorstore.settings import VectorStoreSettings


def build_backend(settings: VectorStoreSettings) -> VectorBackend:
    if settings.backend == "embedded":
        return EmbeddedBackend(
            settings.data_dir,
            index_threshold=settings.index_threshold,
            index_timeout_seconds=settings.index_timeout_seconds,
            search_threads=settings.search_threads,
        )
    api_key = settings.qdrant_api_key.get_secret_value() if settings.qdrant_api_key else None
    return QdrantServerBackend(
        url=settings.qdrant_url,
        api_key=api_key,
        location=settings.qdrant_location,
        timeout_seconds=settings.qdrant_timeout_seconds,
    )


def build_app(settings: VectorStoreSettings, backend: VectorBackend | None = None) -> GrpcApp:
    backend = backend if backend is not None else build_backend(settings)
    embedder = InferenceEmbedder(
        settings.inference_addr,
        batch_size=settings.embed_batch_size,
        timeout_seconds=settings.embed_timeout_seconds,
        attempts=settings.embed_attempts,
    )
    store = VectorStore(settings, backend, embedder)

    def close() -> None:
        embedder.close()
        backend.close()

    return GrpcApp(
        settings=settings,
        service_name="vectorstore",
        register=lambda server: add_to_server(store, server, settings.request_timeout_seconds),
        service_names=[SERVICE_NAME],
        # Ready when storage answers; the inference server is needed only for texts
        # without vectors, and its absence fails those calls fast with UNAVAILABLE.
        readiness=store.ready,
        on_shutdown=close,
    )


def main() -> None:
    run_service(build_app(load_settings(VectorStoreSettings)))


if __name__ == "__main__":
    main()

"""Entry point (`kloop-registry`): wires settings, MLflow, Redis and the cache into a
gRPC service run by kloop_core (health, reflection, metrics, tracing, SIGTERM)."""

from __future__ import annotations

from kloop_core.grpc_server import GrpcApp, run_service
from kloop_core.redis import create_redis
from kloop_core.settings import load_settings
from kloop_registry.artifacts import ArtifactCache
from kloop_registry.grpc_server import SERVICE_NAME, add_to_server
from kloop_registry.service import Registry
from kloop_registry.settings import RegistrySettings
from kloop_registry.store import MlflowStore, configure_http


def build_app(settings: RegistrySettings) -> GrpcApp:
    configure_http(settings.mlflow_timeout_seconds, settings.mlflow_max_retries)
    redis_client = create_redis(settings.redis_url)
    watch_client = create_redis(settings.redis_url, socket_timeout=settings.watch_block_seconds + 2)
    registry = Registry(
        settings,
        store=MlflowStore(
            settings.mlflow_tracking_uri,
            ready_timeout_seconds=settings.version_ready_timeout_seconds,
        ),
        redis_client=redis_client,
        watch_client=watch_client,
        cache=ArtifactCache(settings.artifact_cache_dir),
    )

    def close() -> None:
        redis_client.close()
        watch_client.close()

    return GrpcApp(
        settings=settings,
        service_name="registry",
        register=lambda server: add_to_server(registry, server),
        service_names=[SERVICE_NAME],
        readiness=registry.ready,
        on_shutdown=close,
    )


def main() -> None:
    run_service(build_app(load_settings(RegistrySettings)))


if __name__ == "__main__":
    main()

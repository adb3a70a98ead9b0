"""`python -m kloop_training.job RUN_ID`: execute one stored run and exit, in the pod of
the Kubernetes Job that `KubernetesJobExecutor` created for it.

Exit status: 0 when the run reached a final or re-queued state (a FAILED run is an
answer, not a reason for Kubernetes to retry); 1 when the run could not be recorded at
all (Redis down): the Job's backoffLimit retries it; 2 for bad settings.
"""

from __future__ import annotations

import signal
import sys
import threading
from types import FrameType

from kloop_core.settings import load_settings
from kloop_training.settings import TrainingSettings


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m kloop_training.job RUN_ID", file=sys.stderr)
        return 2
    run_id = args[0]
    settings = load_settings(TrainingSettings)

    from kloop_core.logging import configure_logging, get_logger
    from kloop_core.redis import create_redis
    from kloop_training.clients import RegistryClient
    from kloop_training.executors import execute_run
    from kloop_training.pipeline import PipelineConfig
    from kloop_training.runs import RunStore
    from kloop_training.tracking import MlflowTracker, configure_mlflow_client

    configure_logging("training-job", settings.log_level, settings.log_format)
    log = get_logger(__name__)
    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        log.info("signal received; stopping at the next step", signal=signum)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    configure_mlflow_client(settings.mlflow_timeout_seconds, settings.mlflow_max_retries)
    client = create_redis(settings.redis_url)
    registry = RegistryClient(
        settings.registry_addr,
        timeout_seconds=settings.registry_timeout_seconds,
        attempts=settings.registry_attempts,
    )
    try:
        execute_run(
            run_id,
            stop.is_set,
            store=RunStore(
                client,
                namespace=settings.redis_namespace,
                events_ttl_seconds=settings.events_ttl_seconds,
                idempotency_ttl_seconds=settings.idempotency_ttl_seconds,
            ),
            tracker=MlflowTracker(
                settings.mlflow_tracking_uri, timeout_seconds=settings.mlflow_timeout_seconds
            ),
            registrar=registry,
            config=PipelineConfig(
                experiment_prefix=settings.experiment_prefix,
                dataset_roots=settings.dataset_roots,
                max_dataset_bytes=settings.max_dataset_bytes,
                parity_texts=settings.parity_texts,
                parity_tolerance=settings.parity_tolerance,
            ),
        )
    except Exception:
        log.exception("run could not be executed", run_id=run_id)
        return 1
    finally:
        registry.close()
        client.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())

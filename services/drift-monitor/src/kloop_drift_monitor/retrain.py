"""How the monitor asks the worker to retrain: a Celery task sent by name over the
broker, so this service never imports the worker's code."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any, Protocol

from celery import Celery

RETRAIN_TASK = "kloop.retrain"
TRAINING_QUEUE = "training"


class RetrainRequester(Protocol):
    def request_retrain(self, model: str, evidence: Mapping[str, Any]) -> str:
        """Ask for `model` to be retrained; returns the request's (task) id. Raises when
        the request could not be handed over."""
        ...

    def close(self) -> None: ...


def retrain_task_id(trigger_id: str) -> str:
    """The same trigger always gets the same task id (a resent request is recognisable)."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"kloop-retrain:{trigger_id}"))


class CeleryRetrainRequester:
    """Sends `kloop.retrain(model, evidence)` to the `training` queue (JSON)."""

    def __init__(
        self,
        broker_url: str,
        *,
        task_name: str = RETRAIN_TASK,
        queue: str = TRAINING_QUEUE,
        timeout_seconds: float = 5.0,
    ) -> None:
        self._task_name = task_name
        self._queue = queue
        self._app = Celery("kloop-drift-monitor", broker=broker_url, set_as_current=False)
        self._app.conf.update(
            task_serializer="json",
            accept_content=["json"],
            broker_connection_timeout=timeout_seconds,
            broker_transport_options={"socket_timeout": timeout_seconds},
        )

    def request_retrain(self, model: str, evidence: Mapping[str, Any]) -> str:
        result = self._app.send_task(
            self._task_name,
            args=[model, dict(evidence)],
            queue=self._queue,
            task_id=retrain_task_id(str(evidence["trigger_id"])),
            # A few quick retries, then fail: the next drifted window asks again.
            retry=True,
            retry_policy={
                "max_retries": 2,
                "interval_start": 0.2,
                "interval_step": 0.5,
                "interval_max": 1.0,
            },
        )
        return str(result.id)

    def close(self) -> None:
        self._app.close()

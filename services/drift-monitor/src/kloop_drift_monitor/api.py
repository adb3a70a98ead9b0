"""HTTP API: /v1/status and /v1/reports (JSON errors, RED metrics and ops endpoints come
from kloop_core's FastAPI app)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import HTMLResponse, Response
from google.protobuf.json_format import MessageToDict

from kloop_drift_monitor.monitor import DriftMonitor

router = APIRouter(prefix="/v1", tags=["drift"])


def _monitor(request: Request) -> DriftMonitor:
    monitor: DriftMonitor = request.app.state.monitor
    return monitor


MonitorDep = Annotated[DriftMonitor, Depends(_monitor)]


@router.get("/status")
def status(
    monitor: MonitorDep,
    model: Annotated[str, Query(description="Only this model (empty: all).")] = "",
    version: Annotated[str, Query(description="Only this version of `model`.")] = "",
) -> dict[str, Any]:
    """Per model version: windows, drift values with thresholds, live accuracy and F1,
    events processed, lag, consecutive drifted windows, last retrain trigger."""
    return MessageToDict(
        monitor.status(model, version),
        preserving_proto_field_name=True,
        always_print_fields_with_no_presence=True,
    )


@router.get(
    "/reports/{model}/{version}",
    response_class=Response,
    responses={200: {"content": {"text/html": {}, "application/json": {}}}},
)
def report(
    monitor: MonitorDep,
    model: str,
    version: str,
    format: Literal["html", "json"] = "html",
) -> Response:
    """An Evidently data-drift report of the version's last window against its holdout,
    also stored as an MLflow artifact of the version's run (headers say where)."""
    built = monitor.report(model, version, format, include_content=True)
    headers = {"X-Kloop-Report-Uri": built.artifact_uri, "X-Kloop-Run-Id": built.run_id}
    if format == "html":
        return HTMLResponse(built.content, headers=headers)
    return Response(built.content, media_type="application/json", headers=headers)

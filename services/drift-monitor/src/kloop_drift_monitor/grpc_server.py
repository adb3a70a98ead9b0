"""gRPC `kloop.drift.v1.DriftService` over the monitor."""

from __future__ import annotations

import grpc

from kloop.drift.v1 import drift_pb2 as pb
from kloop.drift.v1 import drift_pb2_grpc
from kloop_drift_monitor.monitor import DriftMonitor

SERVICE_NAME = "kloop.drift.v1.DriftService"


class DriftServicer(drift_pb2_grpc.DriftServiceServicer):  # type: ignore[misc]
    def __init__(self, monitor: DriftMonitor) -> None:
        self._monitor = monitor

    def GetStatus(
        self, request: pb.GetStatusRequest, context: grpc.ServicerContext
    ) -> pb.GetStatusResponse:
        return self._monitor.status(request.model, request.version)

    def GetReport(self, request: pb.GetReportRequest, context: grpc.ServicerContext) -> pb.Report:
        return self._monitor.report(
            request.model,
            request.version,
            request.format,
            include_content=request.include_content,
        )


def add_to_server(monitor: DriftMonitor, server: grpc.Server) -> None:
    drift_pb2_grpc.add_DriftServiceServicer_to_server(DriftServicer(monitor), server)

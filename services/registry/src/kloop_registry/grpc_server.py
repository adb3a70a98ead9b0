"""gRPC edge: translates kloop.registry.v1 messages to and from the domain (service.py).

No logic lives here beyond defaults of the wire format; errors are kloop errors raised
by the domain and mapped to status codes by kloop_core's interceptor.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from kloop.registry.v1 import registry_pb2 as pb
from kloop.registry.v1 import registry_pb2_grpc
from kloop_core.errors import InvalidArgument
from kloop_registry.artifacts import iter_chunks
from kloop_registry.audit import AuditEntry
from kloop_registry.events import ModelEvent
from kloop_registry.imports import DeclaredFile, FilePart, ImportCommand
from kloop_registry.service import AliasChange, Promotion, RegisterCommand, Registry
from kloop_registry.store import ModelRecord, VersionRecord

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["RegistryService"].full_name


def _timestamp(when: datetime) -> Timestamp:
    ts = Timestamp()
    ts.FromDatetime(when)
    return ts


def version_to_proto(v: VersionRecord) -> pb.ModelVersion:
    return pb.ModelVersion(
        name=v.name,
        version=v.version,
        aliases=sorted(v.aliases),
        run_id=v.run_id,
        artifact_uri=v.artifact_uri,
        sha256=v.sha256,
        size_bytes=v.size_bytes,
        metrics=v.metrics,
        tags=v.tags,
        dataset_digest=v.dataset_digest,
        created_at=_timestamp(v.created_at),
    )


def model_to_proto(m: ModelRecord) -> pb.RegisteredModel:
    return pb.RegisteredModel(
        name=m.name, aliases=m.aliases, latest_version=m.latest_version, description=m.description
    )


def entry_to_proto(e: AuditEntry) -> pb.AuditEntry:
    return pb.AuditEntry(
        time=_timestamp(e.time),
        action=e.action.value,
        name=e.name,
        alias=e.alias,
        version=e.version,
        previous_version=e.previous_version,
        actor=e.actor,
        reason=e.reason,
        details=e.details,
    )


def change_to_proto(c: AliasChange) -> pb.AliasChange:
    return pb.AliasChange(
        name=c.name,
        alias=c.alias,
        version=c.version,
        previous_version=c.previous_version,
        entry=entry_to_proto(c.entry) if c.entry else None,
    )


def promotion_to_proto(p: Promotion) -> pb.PromotionDecision:
    r = p.result
    return pb.PromotionDecision(
        approved=r.approved,
        name=p.name,
        candidate_version=p.candidate_version,
        baseline_version=p.baseline_version,
        metric=r.metric,
        candidate_value=r.candidate_value,
        baseline_value=r.baseline_value if r.baseline_value is not None else 0.0,
        margin=r.margin,
        holdout_digest=p.holdout_digest,
        holdout_size=p.holdout_size,
        explanation=r.explanation,
        change=change_to_proto(p.change) if p.change else None,
        candidate_metrics=p.candidate_metrics,
        baseline_metrics=p.baseline_metrics,
    )


def event_to_proto(e: ModelEvent) -> pb.ModelEvent:
    return pb.ModelEvent(
        event_id=e.event_id,
        kind=e.kind.value,
        name=e.name,
        alias=e.alias,
        version=e.version,
        previous_version=e.previous_version,
        artifact_uri=e.artifact_uri,
        sha256=e.sha256,
        actor=e.actor,
        reason=e.reason,
        time=_timestamp(e.time),
    )


class RegistryServicer(registry_pb2_grpc.RegistryServiceServicer):  # type: ignore[misc]
    def __init__(self, registry: Registry) -> None:
        self._registry = registry

    def ListModels(
        self, request: pb.ListModelsRequest, context: grpc.ServicerContext
    ) -> pb.ListModelsResponse:
        models = self._registry.list_models()
        return pb.ListModelsResponse(models=[model_to_proto(m) for m in models])

    def ListVersions(
        self, request: pb.ListVersionsRequest, context: grpc.ServicerContext
    ) -> pb.ListVersionsResponse:
        versions = self._registry.list_versions(request.name)
        return pb.ListVersionsResponse(versions=[version_to_proto(v) for v in versions])

    def GetVersion(
        self, request: pb.GetVersionRequest, context: grpc.ServicerContext
    ) -> pb.ModelVersion:
        return version_to_proto(self._registry.get_version(request.name, request.version))

    def RegisterVersion(
        self, request: pb.RegisterVersionRequest, context: grpc.ServicerContext
    ) -> pb.ModelVersion:
        command = RegisterCommand(
            name=request.name,
            run_id=request.run_id,
            sha256=request.sha256,
            size_bytes=request.size_bytes,
            artifact_path=request.artifact_path,
            dataset_digest=request.dataset_digest,
            tags=dict(request.tags),
            description=request.description,
        )
        return version_to_proto(self._registry.register_version(command))

    def ResolveAlias(
        self, request: pb.ResolveAliasRequest, context: grpc.ServicerContext
    ) -> pb.ModelVersion:
        return version_to_proto(self._registry.resolve_alias(request.name, request.alias))

    def SetAlias(
        self, request: pb.SetAliasRequest, context: grpc.ServicerContext
    ) -> pb.AliasChange:
        change = self._registry.set_alias(
            request.name,
            request.alias,
            request.version,
            actor=request.actor,
            reason=request.reason,
        )
        return change_to_proto(change)

    def DeleteAlias(
        self, request: pb.DeleteAliasRequest, context: grpc.ServicerContext
    ) -> pb.AliasChange:
        change = self._registry.delete_alias(
            request.name, request.alias, actor=request.actor, reason=request.reason
        )
        return change_to_proto(change)

    def Rollback(
        self, request: pb.RollbackRequest, context: grpc.ServicerContext
    ) -> pb.AliasChange:
        change = self._registry.rollback(
            request.name, request.alias, actor=request.actor, reason=request.reason
        )
        return change_to_proto(change)

    def Promote(
        self, request: pb.PromoteRequest, context: grpc.ServicerContext
    ) -> pb.PromotionDecision:
        promotion = self._registry.promote(
            request.name,
            request.version,
            target_alias=request.target_alias,
            baseline_alias=request.baseline_alias,
            actor=request.actor,
            reason=request.reason,
            dry_run=request.dry_run,
        )
        return promotion_to_proto(promotion)

    def GetHistory(
        self, request: pb.GetHistoryRequest, context: grpc.ServicerContext
    ) -> pb.GetHistoryResponse:
        entries = self._registry.history(request.name, request.limit)
        return pb.GetHistoryResponse(entries=[entry_to_proto(e) for e in entries])

    def DownloadArtifact(
        self, request: pb.DownloadArtifactRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.ArtifactChunk]:
        artifact = self._registry.open_artifact(
            sha256=request.sha256, name=request.name, version=request.version, path=request.path
        )
        first = pb.ArtifactChunk(
            sha256=artifact.file.sha256, total_size=artifact.file.size, path=artifact.path
        )
        for chunk in iter_chunks(artifact.file.path):
            if first is not None:
                first.data = chunk
                yield first
                first = None
            else:
                yield pb.ArtifactChunk(data=chunk)
        if first is not None:  # an empty file still gets its header chunk
            yield first

    def ImportModel(
        self, request_iterator: Iterator[pb.ImportModelChunk], context: grpc.ServicerContext
    ) -> pb.ImportModelResponse:
        first = next(request_iterator, None)
        if first is None or first.WhichOneof("part") != "header":
            raise InvalidArgument("ImportModel must start with an ImportModelHeader")
        result = self._registry.import_model(
            import_command(first.header), file_parts(request_iterator)
        )
        return pb.ImportModelResponse(
            version=version_to_proto(result.version),
            created=result.created,
            change=change_to_proto(result.change) if result.change else None,
            signature_json=json.dumps(result.signature, sort_keys=True),
        )

    def WatchModels(
        self, request: pb.WatchModelsRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.ModelEvent]:
        events = self._registry.watch(
            name=request.name, after_event_id=request.after_event_id, is_active=context.is_active
        )
        for event in events:
            yield event_to_proto(event)


def import_command(header: pb.ImportModelHeader) -> ImportCommand:
    return ImportCommand(
        name=header.name,
        files=tuple(DeclaredFile(f.path, f.sha256, f.size_bytes) for f in header.files),
        alias=header.alias,
        description=header.description,
        tags=dict(header.tags),
        actor=header.actor,
        reason=header.reason,
    )


def file_parts(chunks: Iterator[pb.ImportModelChunk]) -> Iterator[FilePart]:
    for chunk in chunks:
        if chunk.WhichOneof("part") != "data":
            raise InvalidArgument("ImportModel takes one header, first; then only data chunks")
        yield FilePart(chunk.data.path, chunk.data.data)


def add_to_server(registry: Registry, server: grpc.Server) -> None:
    registry_pb2_grpc.add_RegistryServiceServicer_to_server(RegistryServicer(registry), server)

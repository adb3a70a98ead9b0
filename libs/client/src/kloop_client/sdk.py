"""Python SDK: typed calls to the training and registry services over gRPC."""

from __future__ import annotations

import getpass
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import grpc
import httpx

from kloop.gateway.v1 import gateway_pb2 as gw
from kloop.gateway.v1 import gateway_pb2_grpc as gw_grpc
from kloop.registry.v1 import registry_pb2 as reg
from kloop.registry.v1 import registry_pb2_grpc as reg_grpc
from kloop.training.v1 import training_pb2 as tr
from kloop.training.v1 import training_pb2_grpc as tr_grpc

TERMINAL = (tr.RUN_STATE_SUCCEEDED, tr.RUN_STATE_FAILED)


class KloopError(RuntimeError):
    """A call to a kloop service failed; `code` is the gRPC status name (e.g. NOT_FOUND)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


def _call(fn: Callable[..., Any], request: Any, timeout: float | None) -> Any:
    try:
        return fn(request, timeout=timeout)
    except grpc.RpcError as e:
        raise KloopError(e.code().name, e.details() or "") from None


def actor() -> str:
    try:
        return f"{getpass.getuser()}@cli"
    except (KeyError, OSError):
        return "cli"


class KloopClient:
    def __init__(self, training_addr: str, registry_addr: str, timeout: float = 30.0) -> None:
        self.timeout = timeout
        self._channels = [
            grpc.insecure_channel(training_addr),
            grpc.insecure_channel(registry_addr),
        ]
        self.training = tr_grpc.TrainingServiceStub(self._channels[0])
        self.registry = reg_grpc.RegistryServiceStub(self._channels[1])

    def close(self) -> None:
        for ch in self._channels:
            ch.close()

    def __enter__(self) -> KloopClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- training -------------------------------------------------------------------
    def submit_run(
        self,
        model_name: str,
        *,
        dataset_uri: str | None = None,
        params: Mapping[str, float] | None = None,
        tags: Mapping[str, str] | None = None,
        idempotency_key: str = "",
    ) -> tr.Run:
        dataset = tr.DatasetSpec(uri=dataset_uri) if dataset_uri else tr.DatasetSpec(builtin=True)
        request = tr.SubmitRunRequest(
            model_name=model_name,
            dataset=dataset,
            params=tr.TrainingParams(**(params or {})),
            tags=dict(tags or {}),
            idempotency_key=idempotency_key,
        )
        return _call(self.training.SubmitRun, request, self.timeout)

    def watch_run(self, run_id: str, timeout: float = 600.0) -> Iterator[tr.RunEvent]:
        try:
            yield from self.training.WatchRun(tr.WatchRunRequest(run_id=run_id), timeout=timeout)
        except grpc.RpcError as e:
            raise KloopError(e.code().name, e.details() or "") from None

    def train(
        self,
        model_name: str,
        *,
        on_event: Callable[[tr.RunEvent], None] | None = None,
        **kwargs: Any,
    ) -> tr.Run:
        """Submit a run and follow it to the end; returns the final Run."""
        run = self.submit_run(model_name, **kwargs)
        for event in self.watch_run(run.run_id):
            if on_event:
                on_event(event)
            if event.state in TERMINAL and event.HasField("run"):
                return event.run
        return self.get_run(run.run_id)

    def get_run(self, run_id: str) -> tr.Run:
        return _call(self.training.GetRun, tr.GetRunRequest(run_id=run_id), self.timeout)

    def list_runs(self, model_name: str = "", page_size: int = 50) -> list[tr.Run]:
        req = tr.ListRunsRequest(model_name=model_name, page_size=page_size)
        return list(_call(self.training.ListRuns, req, self.timeout).runs)

    # --- registry -------------------------------------------------------------------
    def list_models(self) -> list[reg.RegisteredModel]:
        return list(_call(self.registry.ListModels, reg.ListModelsRequest(), self.timeout).models)

    def list_versions(self, name: str) -> list[reg.ModelVersion]:
        req = reg.ListVersionsRequest(name=name)
        return list(_call(self.registry.ListVersions, req, self.timeout).versions)

    def resolve(self, name: str, alias: str) -> reg.ModelVersion:
        req = reg.ResolveAliasRequest(name=name, alias=alias)
        return _call(self.registry.ResolveAlias, req, self.timeout)

    def promote(
        self,
        name: str,
        version: str,
        *,
        target: str = "production",
        baseline: str = "production",
        reason: str = "",
        dry_run: bool = False,
    ) -> reg.PromotionDecision:
        req = reg.PromoteRequest(
            name=name,
            version=version,
            target_alias=target,
            baseline_alias=baseline,
            actor=actor(),
            reason=reason,
            dry_run=dry_run,
        )
        return _call(self.registry.Promote, req, self.timeout)

    def set_alias(self, name: str, alias: str, version: str, reason: str = "") -> reg.AliasChange:
        req = reg.SetAliasRequest(
            name=name, alias=alias, version=version, reason=reason, actor=actor()
        )
        return _call(self.registry.SetAlias, req, self.timeout)

    def delete_alias(self, name: str, alias: str, reason: str = "") -> reg.AliasChange:
        req = reg.DeleteAliasRequest(name=name, alias=alias, reason=reason, actor=actor())
        return _call(self.registry.DeleteAlias, req, self.timeout)

    def rollback(self, name: str, alias: str = "production", reason: str = "") -> reg.AliasChange:
        req = reg.RollbackRequest(name=name, alias=alias, reason=reason, actor=actor())
        return _call(self.registry.Rollback, req, self.timeout)

    def history(self, name: str, limit: int = 0) -> list[reg.AuditEntry]:
        req = reg.GetHistoryRequest(name=name, limit=limit)
        return list(_call(self.registry.GetHistory, req, self.timeout).entries)


class GatewayClient:
    """The gateway's public API: HTTP (JSON) or gRPC, with an API key."""

    def __init__(self, http_url: str, grpc_addr: str, api_key: str, timeout: float = 10.0):
        self.timeout = timeout
        self._key = api_key
        self._http = httpx.Client(
            base_url=http_url, timeout=timeout, headers={"Authorization": f"Bearer {api_key}"}
        )
        self._channel = grpc.insecure_channel(grpc_addr)
        self._stub = gw_grpc.GatewayServiceStub(self._channel)

    def close(self) -> None:
        self._http.close()
        self._channel.close()

    def __enter__(self) -> GatewayClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def predict_http(self, model: str, text: str) -> tuple[dict[str, Any], bool]:
        """The prediction and whether the gateway answered it from its cache."""
        resp = self._http.post(f"/v1/models/{model}/predict", json={"text": text})
        if resp.status_code != 200:
            try:
                error = resp.json()["error"]
                code, message = error["code"], error["message"]
            except (ValueError, KeyError, TypeError):
                code, message = str(resp.status_code), resp.text
            raise KloopError(f"HTTP {resp.status_code} {code}", message)
        return resp.json(), resp.headers.get("x-kloop-cache-hits", "0") != "0"

    def predict_grpc(self, model: str, text: str) -> gw.Prediction:
        try:
            return self._stub.Predict(
                gw.PredictRequest(model=model, text=text),
                timeout=self.timeout,
                metadata=(("authorization", f"Bearer {self._key}"),),
            )
        except grpc.RpcError as e:
            raise KloopError(e.code().name, e.details() or "") from None

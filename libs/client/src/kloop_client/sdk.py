"""Python SDK: typed calls to the training and registry services over gRPC."""

from __future__ import annotations

import getpass
import hashlib
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import grpc
import httpx

from kloop.gateway.v1 import gateway_pb2 as gw
from kloop.gateway.v1 import gateway_pb2_grpc as gw_grpc
from kloop.registry.v1 import registry_pb2 as reg
from kloop.registry.v1 import registry_pb2_grpc as reg_grpc
from kloop.training.v1 import training_pb2 as tr
from kloop.training.v1 import training_pb2_grpc as tr_grpc
from kloop_core.redis import create_redis

TERMINAL = (tr.RUN_STATE_SUCCEEDED, tr.RUN_STATE_FAILED)
IMPORT_CHUNK_BYTES = 1 << 20
MODEL_FILE = "model.onnx"
TOKENIZER_FILE = "tokenizer.json"


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


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(IMPORT_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


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

    def import_model(
        self,
        name: str,
        model_path: Path,
        *,
        tokenizer_path: Path | None = None,
        alias: str = "",
        description: str = "",
        reason: str = "",
        tags: Mapping[str, str] | None = None,
        timeout: float = 600.0,
    ) -> reg.ImportModelResponse:
        """Register an ONNX file (and a tokenizer.json: a text-embedding model) as a new
        version of `name`, streamed to the registry in chunks; optionally point `alias`
        at it (no gate: imported models have no holdout)."""
        files = [(MODEL_FILE, model_path)]
        if tokenizer_path is not None:
            files.append((TOKENIZER_FILE, tokenizer_path))
        declared = [
            reg.ImportedFile(path=file, sha256=_sha256(path), size_bytes=path.stat().st_size)
            for file, path in files
        ]
        header = reg.ImportModelHeader(
            name=name,
            files=declared,
            alias=alias,
            description=description,
            tags=dict(tags or {}),
            actor=actor(),
            reason=reason,
        )

        def chunks() -> Iterator[reg.ImportModelChunk]:
            yield reg.ImportModelChunk(header=header)
            for file, path in files:
                with path.open("rb") as handle:
                    while data := handle.read(IMPORT_CHUNK_BYTES):
                        yield reg.ImportModelChunk(data=reg.ImportModelData(path=file, data=data))

        response: reg.ImportModelResponse = _call(self.registry.ImportModel, chunks(), timeout)
        return response


# Ingestion states that are not final (the worker's, kloop_worker.documents).
DOCUMENT_UNFINISHED = ("queued", "running", "deleting")


class GatewayClient:
    """The gateway's public API: HTTP (JSON) or gRPC, with an API key."""

    def __init__(self, http_url: str, grpc_addr: str, api_key: str, timeout: float = 10.0):
        self.timeout = timeout
        self.api_key = api_key
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

    def _post(self, path: str, body: Mapping[str, Any]) -> httpx.Response:
        # Over the key's rate limit (429), wait as Retry-After says, up to `timeout` in
        # all, instead of failing: a well-behaved client of a shared limit.
        deadline = time.monotonic() + self.timeout
        while True:
            resp = self._http.post(path, json=body)
            wait = _retry_after(resp)
            if resp.status_code != 429 or time.monotonic() + wait > deadline:
                break
            time.sleep(wait)
        return _checked(resp)

    def predict_http(self, model: str, text: str) -> tuple[dict[str, Any], bool]:
        """The prediction and whether the gateway answered it from its cache."""
        resp = self._post(f"/v1/models/{model}/predict", {"text": text})
        return resp.json(), resp.headers.get("x-kloop-cache-hits", "0") != "0"

    def predict_batch_http(self, model: str, texts: Sequence[str]) -> list[dict[str, Any]]:
        resp = self._post(f"/v1/models/{model}/predict:batch", {"texts": list(texts)})
        predictions: list[dict[str, Any]] = resp.json()["predictions"]
        return predictions

    def add_documents(
        self, collection: str, documents: Sequence[Mapping[str, str]]
    ) -> list[dict[str, str]]:
        """Queue documents ({id, source, text}) for ingestion; their ids and status URLs."""
        body = {"collection": collection, "documents": list(documents)}
        accepted: list[dict[str, str]] = self._post("/v1/documents", body).json()["documents"]
        return accepted

    def document_status(self, status_url: str) -> dict[str, Any]:
        status: dict[str, Any] = _checked(self._http.get(status_url)).json()
        return status

    def feedback(self, prediction_id: str, label: str) -> str:
        """Record the true label of a prediction; "recorded" or "duplicate"."""
        body = {"prediction_id": prediction_id, "label": label}
        status: str = self._post("/v1/feedback", body).json()["status"]
        return status

    def predict_grpc(self, model: str, text: str) -> gw.Prediction:
        try:
            return self._stub.Predict(
                gw.PredictRequest(model=model, text=text),
                timeout=self.timeout,
                metadata=(("authorization", f"Bearer {self.api_key}"),),
            )
        except grpc.RpcError as e:
            raise KloopError(e.code().name, e.details() or "") from None


class RagClient:
    """The RAG service's HTTP API, with an API key (scope `ask`)."""

    def __init__(self, http_url: str, api_key: str, timeout: float = 120.0) -> None:
        self._http = httpx.Client(
            base_url=http_url, timeout=timeout, headers={"Authorization": f"Bearer {api_key}"}
        )

    def ask(self, question: str, collection: str, k: int = 5) -> dict[str, Any]:
        """The answer, its mode (generative or extractive) and its citations."""
        body = {"question": question, "collection": collection, "k": k}
        answer: dict[str, Any] = _checked(self._http.post("/v1/ask", json=body)).json()
        return answer

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> RagClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _checked(resp: httpx.Response) -> httpx.Response:
    """The response if 2xx, else KloopError with the error contract's code and message."""
    if not resp.is_success:
        try:
            error = resp.json()["error"]
            code, message = error["code"], error["message"]
        except (ValueError, KeyError, TypeError):
            code, message = str(resp.status_code), resp.text
        raise KloopError(f"HTTP {resp.status_code} {code}", message)
    return resp


def _retry_after(resp: httpx.Response) -> float:
    try:
        return min(max(float(resp.headers.get("retry-after", "1")), 0.05), 5.0)
    except ValueError:
        return 1.0


class PipelineAudit:
    """The worker's audit log of a model's retraining pipelines: a Redis stream
    (`kloop:worker:audit:<model>`, written by kloop_worker.pipelines) of entries with
    time, pipeline_id, step, event, message and details (JSON)."""

    def __init__(self, redis_url: str, model: str, namespace: str = "kloop:worker") -> None:
        self._redis = create_redis(redis_url)
        self.key = f"{namespace}:audit:{model}"

    def entries(self, limit: int = 0) -> list[dict[str, str]]:
        """Oldest first; the last `limit` entries (0: all)."""
        raw: Any = (
            list(reversed(self._redis.xrevrange(self.key, count=limit)))  # type: ignore[arg-type]
            if limit
            else self._redis.xrange(self.key)
        )
        return [_decode(fields) for _, fields in raw]

    def follow(self, timeout: float, after: str = "0") -> Iterator[dict[str, str]]:
        """Every entry after stream id `after`, then new ones as they are written, until
        the caller stops or `timeout` seconds pass (then DEADLINE_EXCEEDED)."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            block = max(1, int(min(left, 1.0) * 1000))
            streams: Any = self._redis.xread({self.key: after}, block=block)
            for _, messages in streams or []:
                for entry_id, fields in messages:
                    after = entry_id
                    yield _decode(fields)
        raise KloopError("DEADLINE_EXCEEDED", f"no pipeline outcome after {timeout:.0f} s")

    def close(self) -> None:
        self._redis.close()


def _decode(fields: Mapping[bytes | str, bytes | str]) -> dict[str, str]:
    def text(v: bytes | str) -> str:
        return v.decode() if isinstance(v, bytes) else v

    return {text(k): text(v) for k, v in fields.items()}

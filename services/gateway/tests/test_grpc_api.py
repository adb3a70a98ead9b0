"""kloop.gateway.v1 over gRPC: same answers, auth, limits and errors as HTTP."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest

from kloop.gateway.v1 import gateway_pb2 as pb
from kloop.gateway.v1 import gateway_pb2_grpc as pb_grpc
from kloop_core.api_keys import ApiKeyStore
from kloop_gateway.grpc_api import token_from_metadata

from .conftest import GatewayThread


@pytest.fixture
def stub(running_gateway: GatewayThread) -> Iterator[pb_grpc.GatewayServiceStub]:
    with grpc.insecure_channel(running_gateway.grpc_addr) as channel:
        yield pb_grpc.GatewayServiceStub(channel)


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


def test_predict_batch_and_feedback(stub: pb_grpc.GatewayServiceStub, full_token: str) -> None:
    auth = bearer(full_token)
    one = stub.Predict(pb.PredictRequest(model="sentiment", text="great food"), metadata=auth)
    assert one.label == "positive" and len(one.id) == 32
    assert (one.model.name, one.model.version, one.model.alias) == ("sentiment", "1", "production")
    batch = stub.PredictBatch(
        pb.PredictBatchRequest(model="sentiment", texts=["awful", "great food"]), metadata=auth
    )
    assert [p.label for p in batch.predictions] == ["negative", "positive"]
    reply = stub.Feedback(pb.FeedbackRequest(prediction_id=one.id, label="positive"), metadata=auth)
    assert reply.status == "recorded"
    again = stub.Feedback(pb.FeedbackRequest(prediction_id=one.id, label="positive"), metadata=auth)
    assert again.status == "duplicate"


def _error(call: object) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        call()  # type: ignore[operator]
    return caught.value


def test_errors_map_to_grpc_codes(
    stub: pb_grpc.GatewayServiceStub, full_token: str, predict_token: str, key_store: ApiKeyStore
) -> None:
    auth = bearer(full_token)
    cases = {
        grpc.StatusCode.UNAUTHENTICATED: lambda: stub.Predict(
            pb.PredictRequest(model="sentiment", text="x")
        ),
        grpc.StatusCode.PERMISSION_DENIED: lambda: stub.Feedback(
            pb.FeedbackRequest(prediction_id="0" * 32, label="positive"),
            metadata=bearer(predict_token),
        ),
        grpc.StatusCode.NOT_FOUND: lambda: stub.Predict(
            pb.PredictRequest(model="no-such-model", text="x"), metadata=auth
        ),
        grpc.StatusCode.INVALID_ARGUMENT: lambda: stub.Predict(
            pb.PredictRequest(model="sentiment", text="  "), metadata=auth
        ),
    }
    for code, call in cases.items():
        assert _error(call).code() is code


def test_too_large_request_is_payload_too_large(
    stub: pb_grpc.GatewayServiceStub, full_token: str, running_gateway: GatewayThread
) -> None:
    size = running_gateway.settings.max_body_bytes + 1
    error = _error(
        lambda: stub.Predict(
            pb.PredictRequest(model="sentiment", text="a" * size), metadata=bearer(full_token)
        )
    )
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert dict(error.trailing_metadata())["kloop-error-code"] == "payload_too_large"


def test_rate_limit_carries_retry_after(
    stub: pb_grpc.GatewayServiceStub, key_store: ApiKeyStore
) -> None:
    _, token = key_store.create(["predict"], rate_per_second=0.5, burst=1)
    request = pb.PredictRequest(model="sentiment", text="fine")
    stub.Predict(request, metadata=bearer(token))
    error = _error(lambda: stub.Predict(request, metadata=bearer(token)))
    assert error.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert 0 < float(dict(error.trailing_metadata())["retry-after"]) <= 2


def test_x_api_key_metadata_and_route_key(
    stub: pb_grpc.GatewayServiceStub, predict_token: str
) -> None:
    reply = stub.Predict(
        pb.PredictRequest(model="sentiment", text="fine"),
        metadata=(("x-api-key", predict_token), ("x-kloop-route-key", "user-1")),
    )
    assert reply.model.alias == "production"


@pytest.mark.parametrize(
    ("metadata", "token"),
    [
        ([("authorization", "Bearer abc")], "abc"),
        ([("authorization", "bearer  abc ")], "abc"),
        ([("authorization", "Basic abc")], None),
        ([("x-api-key", "k")], "k"),
        ([("authorization", "Bearer a"), ("x-api-key", "k")], "a"),
        ([], None),
    ],
)
def test_token_from_metadata(metadata: list[tuple[str, str]], token: str | None) -> None:
    assert token_from_metadata(metadata) == token

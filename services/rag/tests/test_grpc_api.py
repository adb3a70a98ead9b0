"""kloop.rag.v1.RagService over real gRPC: same behaviour as HTTP."""

from __future__ import annotations

import grpc
import pytest

from kloop.rag.v1 import rag_pb2 as pb
from kloop.rag.v1 import rag_pb2_grpc as pb_grpc
from kloop_rag.testing.fake_anthropic import Fault

from .conftest import COLLECTION, create_key

QUESTION = "What does the kloop gateway check on every request?"


def stub(service) -> pb_grpc.RagServiceStub:
    return pb_grpc.RagServiceStub(grpc.insecure_channel(service.grpc_addr))


def test_ask(make_rag, fake_llm) -> None:
    service = make_rag()
    reply = stub(service).Ask(
        pb.AskRequest(question=QUESTION, collection=COLLECTION, k=3), timeout=10
    )
    assert reply.mode == "generative"
    assert [c.ref for c in reply.citations] == [1, 2]
    assert reply.citations[0].id == "docs/gateway.md#0"
    assert reply.citations[0].chunk == 0
    assert reply.usage.input_tokens > 0 and reply.usage.cost_usd > 0
    again = stub(service).Ask(
        pb.AskRequest(question=QUESTION, collection=COLLECTION, k=3), timeout=10
    )
    assert again.cached and again.answer == reply.answer
    assert len(fake_llm.requests) == 1


def test_ask_stream(make_rag, fake_llm) -> None:
    service = make_rag()
    messages = list(
        stub(service).AskStream(pb.AskRequest(question=QUESTION, collection=COLLECTION), timeout=10)
    )
    kinds = [m.WhichOneof("event") for m in messages]
    assert kinds[-1] == "final" and set(kinds[:-1]) == {"delta"} and len(kinds) > 3
    final = messages[-1].final
    assert final.answer == "".join(m.delta for m in messages[:-1])
    assert [c.ref for c in final.citations] == [1, 2]
    assert final.usage.output_tokens > 0


def test_extractive(make_rag) -> None:
    service = make_rag(anthropic_api_key=None)
    reply = stub(service).Ask(
        pb.AskRequest(
            question="Which statistics does the drift monitor compute?", collection=COLLECTION
        ),
        timeout=10,
    )
    assert reply.mode == "extractive"
    assert "PSI" in reply.answer and reply.citations[0].source == "docs/drift.md"


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize(
    ("request_", "code"),
    [
        (pb.AskRequest(question=" ", collection=COLLECTION), grpc.StatusCode.INVALID_ARGUMENT),
        (pb.AskRequest(question="q?", collection="nope"), grpc.StatusCode.NOT_FOUND),
    ],
)
def test_errors(make_rag, request_, code, stream) -> None:
    service = make_rag()
    with pytest.raises(grpc.RpcError) as caught:
        if stream:
            list(stub(service).AskStream(request_, timeout=10))
        else:
            stub(service).Ask(request_, timeout=10)
    assert caught.value.code() == code


@pytest.mark.parametrize("stream", [False, True])
def test_llm_down_is_unavailable_with_retry_after(make_rag, fake_llm, stream) -> None:
    fake_llm.faults.extend([Fault(status=529, retry_after_ms=10)] * 3)
    service = make_rag(llm_max_retries=1)
    request = pb.AskRequest(question=QUESTION, collection=COLLECTION)
    with pytest.raises(grpc.RpcError) as caught:
        if stream:
            list(stub(service).AskStream(request, timeout=10))
        else:
            stub(service).Ask(request, timeout=10)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert dict(caught.value.trailing_metadata()).get("retry-after")


def test_vector_store_down(make_rag) -> None:
    service = make_rag(vectorstore_addr="127.0.0.1:1")
    with pytest.raises(grpc.RpcError) as caught:
        stub(service).Ask(pb.AskRequest(question=QUESTION, collection=COLLECTION), timeout=10)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


def test_auth(make_rag, redis_client) -> None:
    service = make_rag(auth_enabled=True, mode="extractive")
    request = pb.AskRequest(question=QUESTION, collection=COLLECTION)
    with pytest.raises(grpc.RpcError) as caught:
        stub(service).Ask(request, timeout=10)
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    token = create_key(redis_client, "ask")
    reply = stub(service).Ask(request, timeout=10, metadata=[("authorization", f"Bearer {token}")])
    assert reply.mode == "extractive"
    with pytest.raises(grpc.RpcError) as caught:
        list(
            stub(service).AskStream(
                request, timeout=10, metadata=[("x-api-key", create_key(redis_client, "predict"))]
            )
        )
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED

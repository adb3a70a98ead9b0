"""Schema-driven fuzzing (schemathesis) of the gateway's OpenAPI with a valid key: no
input it can generate may produce a 5xx; statuses, headers and bodies must match what
the document says, and schema-violating input must be refused."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
import redis
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis import Case
from schemathesis.checks import allow_header_conformance, positive_data_acceptance

from kloop.vectorstore.v1 import vectorstore_pb2_grpc
from kloop_core.api_keys import ApiKeyStore
from kloop_gateway.app import create_app
from kloop_gateway.settings import GatewaySettings

from .api.routes.test_documents import Collections
from .conftest import GatewayThread, InferenceThread, gateway_settings, redis_db

FUZZ_DB = 4  # its own database: fuzzed traffic policies must not reach other tests


@pytest.fixture(scope="module")
def fuzz_gateway(redis_url: str, inference: InferenceThread) -> Iterator[GatewayThread]:
    url = redis_db(redis_url, FUZZ_DB)
    redis.Redis.from_url(url).flushdb()
    # /v1/documents checks collections with the vector store: a stand-in answers.
    server = grpc.server(ThreadPoolExecutor(2))
    vectorstore_pb2_grpc.add_VectorStoreServiceServicer_to_server(Collections(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    with pytest.MonkeyPatch.context() as env:
        env.setenv("KLOOP_GATEWAY_DOCUMENTS_VECTORSTORE_ADDR", f"127.0.0.1:{port}")
        running = GatewayThread(gateway_settings(url, inference.addr))
        yield running
        running.close()
    server.stop(0)


@pytest.fixture(scope="module")
def fuzz_token(redis_url: str) -> str:
    store = ApiKeyStore(redis.Redis.from_url(redis_db(redis_url, FUZZ_DB)))
    _, token = store.create(
        ["predict", "feedback", "admin"], rate_per_second=100_000, burst=100_000
    )
    return token


# The document the gateway serves at /openapi.json (building the app connects nothing).
# Loaded at import rather than from a fixture: schemathesis' lazy fixture loader does
# not work with pytest 9.
schema = schemathesis.openapi.from_dict(
    create_app(GatewaySettings(grpc_port=0, http_port=0)).openapi()
)


@schema.parametrize()
@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
def test_no_server_errors(case: Case, fuzz_gateway: GatewayThread, fuzz_token: str) -> None:
    case.call_and_validate(
        base_url=fuzz_gateway.url,
        headers={"Authorization": f"Bearer {fuzz_token}"},
        # Not checked: that every schema-valid body is accepted (limits such as
        # max_text_chars and the label set are settings, not schema) and the Allow header
        # of 405s (Starlette lists one route's methods).
        excluded_checks=[positive_data_acceptance, allow_header_conformance],
    )

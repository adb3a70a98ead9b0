"""OIP over HTTP against a real server: tritonclient (unmodified), raw requests, errors."""

from __future__ import annotations

import re
import struct
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import orjson
import pytest
import tritonclient.http as triton_http
from tritonclient.utils import InferenceServerException

from kloop_model import SentimentClassifier

from .conftest import ServerThread

TEXTS = ["I love this product, it is great!", "terrible, awful, bad", "", "naïve café ✓"]


@pytest.fixture(scope="module")
def client(server: ServerThread) -> httpx.Client:
    with httpx.Client(base_url=f"http://{server.http}", timeout=10) as http:
        yield http


@pytest.fixture(scope="module")
def triton(server: ServerThread) -> triton_http.InferenceServerClient:
    return triton_http.InferenceServerClient(server.http)


def text_input(texts: list[str], binary: bool) -> triton_http.InferInput:
    tensor = triton_http.InferInput("text", [len(texts)], "BYTES")
    tensor.set_data_from_numpy(
        np.array([t.encode() for t in texts], dtype=object), binary_data=binary
    )
    return tensor


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_tritonclient_scores_texts_like_the_numpy_model(
    triton: triton_http.InferenceServerClient, sentiment_model: SentimentClassifier, binary: bool
) -> None:
    outputs = (
        None if binary else [triton_http.InferRequestedOutput("probability", binary_data=False)]
    )
    result = triton.infer(
        "sentiment", [text_input(TEXTS, binary)], outputs=outputs, request_id="r-1"
    )
    np.testing.assert_allclose(
        result.as_numpy("probability"), sentiment_model.predict_proba(TEXTS), atol=1e-6
    )
    response = result.get_response()
    assert response["model_version"] == "1"
    assert response["id"] == "r-1"
    assert ("parameters" in response["outputs"][0]) is binary


def test_tritonclient_health_and_metadata(triton: triton_http.InferenceServerClient) -> None:
    assert triton.is_server_live()
    assert triton.is_server_ready()
    assert triton.is_model_ready("sentiment")
    assert triton.is_model_ready("sentiment", "1")
    assert not triton.is_model_ready("sentiment", "canary")  # no canary in the registry
    assert triton.get_server_metadata()["extensions"] == ["binary_tensor_data"]
    assert triton.get_model_metadata("sentiment") == {
        "name": "sentiment",
        "versions": ["1"],
        "platform": "onnxruntime_onnx",
        "inputs": [{"name": "text", "datatype": "BYTES", "shape": [-1]}],
        "outputs": [{"name": "probability", "datatype": "FP32", "shape": [-1]}],
    }


def infer_body(**tensor: object) -> dict[str, object]:
    base = {"name": "text", "datatype": "BYTES", "shape": [1], "data": ["good"]}
    return {"inputs": [{**base, **tensor}]}


@pytest.mark.parametrize("path", ["", "/versions/1", "/versions/production"])
def test_versions_are_numbers_or_aliases(client: httpx.Client, path: str) -> None:
    response = client.post(f"/v2/models/sentiment{path}/infer", json=infer_body())
    assert response.status_code == 200
    assert response.json()["model_version"] == "1"


def test_several_inputs_and_datatypes(client: httpx.Client) -> None:
    response = client.post(
        "/v2/models/numeric/infer",
        json={
            "inputs": [
                {
                    "name": "x",
                    "datatype": "FP32",
                    "shape": [2, 3],
                    "data": [[1, 2, 3], [4, 5, 6.5]],
                },
                {"name": "count", "datatype": "INT64", "shape": [2], "data": [7, -8]},
                {"name": "on", "datatype": "BOOL", "shape": [2], "data": [True, False]},
            ],
            "outputs": [{"name": "total"}, {"name": "scaled"}, {"name": "flag"}],
        },
    )
    assert response.status_code == 200
    outputs = response.json()["outputs"]
    assert outputs == [
        {"name": "total", "datatype": "INT64", "shape": [2], "data": [8, -7]},
        {"name": "scaled", "datatype": "FP32", "shape": [2, 3], "data": [2, 4, 6, 8, 10, 13]},
        {"name": "flag", "datatype": "BOOL", "shape": [2], "data": [False, True]},
    ]
    assert response.json()["model_version"] == "3"


@pytest.mark.parametrize(
    ("path", "body", "status", "message"),
    [
        (
            "sentiment",
            infer_body(shape=[2]),
            400,
            "input 'text': shape [2] needs 2 elements, data has 1",
        ),
        (
            "sentiment",
            infer_body(datatype="FP32", data=[1.0]),
            400,
            "input 'text' must be BYTES, got FP32",
        ),
        (
            "sentiment",
            infer_body(name="txt"),
            400,
            "model 'sentiment' has no input named 'txt'; inputs: text",
        ),
        (
            "sentiment",
            infer_body(shape=[1, 1]),
            400,
            "input 'text' has shape [1, 1], model 'sentiment' expects [-1]",
        ),
        ("sentiment", {"inputs": "x"}, 400, "request must have a non-empty 'inputs' list"),
        (
            "nope",
            infer_body(),
            404,
            "model 'nope' is not served here; served models: numeric, sentiment",
        ),
        (
            "sentiment/versions/canary",
            infer_body(),
            404,
            "model 'sentiment' has no version under alias 'canary'",
        ),
        (
            "sentiment/versions/7",
            infer_body(),
            404,
            "version '7' of model 'sentiment' is not served",
        ),
    ],
)
def test_bad_requests_get_oip_errors(
    client: httpx.Client, path: str, body: object, status: int, message: str
) -> None:
    response = client.post(f"/v2/models/{path}/infer", json=body)
    assert response.status_code == status
    assert message in response.json()["error"]
    assert set(response.json()) == {"error"}


def test_invalid_utf8_and_malformed_binary_data_are_400(client: httpx.Client) -> None:
    header = orjson.dumps(
        {
            "inputs": [
                {
                    "name": "text",
                    "datatype": "BYTES",
                    "shape": [1],
                    "parameters": {"binary_data_size": 6},
                }
            ]
        }
    )
    response = client.post(
        "/v2/models/sentiment/infer",
        content=header + struct.pack("<I", 2) + b"\xff\xfe",
        headers={"Inference-Header-Content-Length": str(len(header))},
    )
    assert response.status_code == 400
    assert response.json() == {
        "error": "input 'text': BYTES element 0 is not valid UTF-8 (byte 0xff at offset 0)"
    }
    response = client.post(
        "/v2/models/sentiment/infer",
        content=b"{not json",
        headers={"Content-Type": "application/json"},
    )
    assert response.status_code == 400
    assert response.json()["error"].startswith("request body is not valid JSON")
    response = client.post(
        "/v2/models/sentiment/infer",
        content=header,
        headers={"Inference-Header-Content-Length": "x"},
    )
    assert response.status_code == 400
    assert (
        "Inference-Header-Content-Length must be a non-negative integer" in response.json()["error"]
    )


def test_tritonclient_sees_errors_as_exceptions(triton: triton_http.InferenceServerClient) -> None:
    with pytest.raises(InferenceServerException, match="not served here"):
        triton.infer("nope", [text_input(["x"], True)])


def test_routes_methods_and_probes(client: httpx.Client) -> None:
    assert client.get("/v2/health/live").json() == {"live": True}
    assert client.get("/v2/health/ready").json() == {"ready": True}
    assert client.get("/livez").status_code == 200
    assert client.get("/readyz").json() == {"ready": True}
    assert client.get("/v2/models/sentiment/versions/1").json()["versions"] == ["1"]
    assert client.get("/v2/models/sentiment/ready").json() == {"name": "sentiment", "ready": True}
    canary = client.get("/v2/models/sentiment/versions/canary/ready")
    assert (canary.status_code, canary.headers["retry-after"]) == (503, "1")
    assert client.get("/v2/models/nope/ready").status_code == 404
    assert client.get("/v2/models/sentiment/infer").status_code == 405
    assert client.post("/v2/health/live").status_code == 405
    assert client.get("/v3/nothing").status_code == 404
    assert client.get("/v2/models/sentiment/extra/stuff").status_code == 404


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample (labels must match exactly, in any order)."""
    for line in text.splitlines():
        match = re.match(r"^(\w+)(?:\{(.*)\})? (\S+)$", line)
        if not match or match.group(1) != name:
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', match.group(2) or ""))
        if found == labels:
            return float(match.group(3))
    raise AssertionError(f"no sample {name} {labels}")


def test_concurrent_requests_are_batched_and_observable(client: httpx.Client) -> None:
    before = client.get("/metrics").text

    def send(i: int) -> str:
        response = client.post("/v2/models/sentiment/infer", json=infer_body(data=[f"text {i}"]))
        assert response.status_code == 200
        return response.json()["model_version"]

    with ThreadPoolExecutor(8) as pool:
        assert set(pool.map(send, range(400))) == {"1"}
    after = client.get("/metrics").text
    series = {"model": "sentiment", "version": "1"}

    def delta(name: str, **labels: str) -> float:
        return metric(after, name, **labels) - metric(before, name, **labels)

    batches = delta("kloop_inference_batch_size_count", **series)
    single_row_batches = delta("kloop_inference_batch_size_bucket", le="1.0", **series)
    assert delta("kloop_inference_batch_size_sum", **series) == 400
    assert single_row_batches < batches  # some batches held several requests
    assert delta("kloop_inference_queue_duration_seconds_count", **series) == 400
    ok = {**series, "protocol": "http", "status": "ok"}
    assert delta("kloop_inference_requests_total", **ok) == 400
    assert metric(after, "kloop_inference_pending_requests", model="sentiment") == 0
    assert (
        metric(
            after,
            "kloop_inference_model_info",
            model="sentiment",
            alias="production",
            version="1",
            sha256=server_sha256(after),
        )
        == 1
    )
    assert (
        metric(
            after,
            "kloop_http_requests_total",
            service="inference",
            route="/v2/models/{name}/infer",
            method="POST",
            code="200",
        )
        >= 400
    )


def server_sha256(metrics_text: str) -> str:
    match = re.search(
        r'kloop_inference_model_info\{[^}]*model="sentiment"[^}]*sha256="(\w+)"', metrics_text
    )
    assert match is not None
    return match.group(1)

"""Run by test_grpc_api in a subprocess: tritonclient's generated protos and kloop's OIP
protos define the same `inference.*` messages and cannot share one process.

Usage: python triton_grpc_probe.py HOST:PORT TEXT... ; prints one JSON document.
"""

from __future__ import annotations

import json
import sys

import numpy as np
import tritonclient.grpc as triton_grpc
from tritonclient.utils import InferenceServerException


def main() -> None:
    url, texts = sys.argv[1], sys.argv[2:]
    client = triton_grpc.InferenceServerClient(url)
    tensor = triton_grpc.InferInput("text", [len(texts)], "BYTES")
    tensor.set_data_from_numpy(np.array([t.encode() for t in texts], dtype=object))
    result = client.infer("sentiment", [tensor], request_id="g-1")
    response = result.get_response()
    errors = {}
    for name, model, version in [
        ("unknown_model", "nope", ""),
        ("absent_alias", "sentiment", "canary"),
    ]:
        try:
            client.infer(model, [tensor], model_version=version)
        except InferenceServerException as error:
            errors[name] = [error.status(), error.message()]
    bad = triton_grpc.InferInput("text", [1], "FP32")
    bad.set_data_from_numpy(np.array([1.0], dtype=np.float32))
    try:
        client.infer("sentiment", [bad])
    except InferenceServerException as error:
        errors["wrong_datatype"] = [error.status(), error.message()]
    metadata = client.get_model_metadata("sentiment", as_json=True)
    print(
        json.dumps(
            {
                "live": client.is_server_live(),
                "ready": client.is_server_ready(),
                "model_ready": client.is_model_ready("sentiment"),
                "probabilities": result.as_numpy("probability").tolist(),
                "model_version": response.model_version,
                "id": response.id,
                "metadata": metadata,
                "errors": errors,
            }
        )
    )


if __name__ == "__main__":
    main()

"""The OIP tensor codec: round trips for every wire form, and exact error messages."""

from __future__ import annotations

import json
import struct
from typing import Any

import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from tritonclient.utils import deserialize_bytes_tensor, serialize_byte_tensor

from kloop.oip.v2 import grpc_predict_v2_pb2 as pb
from kloop_inference.tensors import (
    CONTENTS_FIELDS,
    DATATYPES,
    InferRequest,
    RequestedOutput,
    Tensor,
    TensorError,
    TensorSpec,
    decode_grpc_request,
    decode_http_request,
    decode_raw,
    encode_grpc_response,
    encode_http_response,
    encode_raw,
    match_inputs,
    select_outputs,
)

NUMERIC = [name for name in DATATYPES if name != "BYTES"]
shapes = hnp.array_shapes(min_dims=1, max_dims=3, min_side=0, max_side=4)


@st.composite
def tensors(draw: st.DrawFn, datatypes: list[str] | None = None) -> tuple[str, np.ndarray]:
    datatype = draw(st.sampled_from(datatypes or list(DATATYPES)))
    shape = draw(shapes)
    if datatype == "BYTES":
        size = int(np.prod(shape))
        items = draw(st.lists(st.text(max_size=12), min_size=size, max_size=size))
        array = np.array(items, dtype=object).reshape(shape) if items else np.empty(shape, object)
        return datatype, array
    dtype = DATATYPES[datatype]
    elements = (
        st.floats(allow_nan=False, allow_infinity=False, width=dtype.itemsize * 8)
        if dtype.kind == "f"
        else None
    )
    return datatype, draw(hnp.arrays(dtype, shape, elements=elements))


def assert_same(got: np.ndarray, expected: np.ndarray) -> None:
    assert got.shape == expected.shape
    assert got.dtype == expected.dtype
    assert got.reshape(-1).tolist() == expected.reshape(-1).tolist()


def http_json_input(name: str, datatype: str, array: np.ndarray) -> dict[str, Any]:
    return {
        "name": name,
        "datatype": datatype,
        "shape": list(array.shape),
        "data": array.reshape(-1).tolist(),
    }


# --- round trips ---------------------------------------------------------------------


@settings(max_examples=150, deadline=None)
@given(tensors())
def test_json_tensors_round_trip(tensor: tuple[str, np.ndarray]) -> None:
    datatype, array = tensor
    body = orjson.dumps({"inputs": [http_json_input("x", datatype, array)]})
    request = decode_http_request(body)
    assert_same(request.inputs[0].data, array)
    response, header_length = encode_http_response("m", "1", request, request.inputs)
    assert header_length is None
    output = orjson.loads(response)["outputs"][0]
    assert output["shape"] == list(array.shape)
    assert_same(np.array(output["data"], dtype=DATATYPES[datatype]).reshape(array.shape), array)


@settings(max_examples=150, deadline=None)
@given(tensors(), tensors())
def test_binary_tensors_round_trip_through_the_http_extension(
    first: tuple[str, np.ndarray], second: tuple[str, np.ndarray]
) -> None:
    inputs = [("a", *first), ("b", *second)]
    header = {
        "inputs": [
            {
                "name": name,
                "datatype": datatype,
                "shape": list(array.shape),
                "parameters": {"binary_data_size": len(encode_raw(array, datatype))},
            }
            for name, datatype, array in inputs
        ],
        "parameters": {"binary_data_output": True},
    }
    json_part = orjson.dumps(header)
    body = json_part + b"".join(encode_raw(array, datatype) for _, datatype, array in inputs)
    request = decode_http_request(body, len(json_part))
    for decoded, (_, _, array) in zip(request.inputs, inputs, strict=True):
        assert_same(decoded.data, array)
    response, header_length = encode_http_response("m", "7", request, request.inputs)
    assert header_length is not None
    described = orjson.loads(response[:header_length])
    assert described["model_version"] == "7"
    offset = header_length
    for output, (_, datatype, array) in zip(described["outputs"], inputs, strict=True):
        size = output["parameters"]["binary_data_size"]
        raw = response[offset : offset + size]
        offset += size
        assert_same(decode_raw("x", datatype, output["shape"], raw), array)
    assert offset == len(response)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.text(max_size=20), min_size=0, max_size=8))
def test_bytes_encoding_matches_tritonclient(texts: list[str]) -> None:
    array = np.array([text.encode() for text in texts], dtype=object)
    ours = encode_raw(np.array(texts, dtype=object), "BYTES")
    theirs = serialize_byte_tensor(array)
    assert ours == (theirs.item() if theirs.size else b"")
    if texts:
        back = deserialize_bytes_tensor(ours)
        assert [item.decode() for item in back] == texts


@settings(max_examples=150, deadline=None)
@given(tensors([name for name in DATATYPES if name in CONTENTS_FIELDS]))
def test_grpc_contents_round_trip(tensor: tuple[str, np.ndarray]) -> None:
    datatype, array = tensor
    message = pb.ModelInferRequest(model_name="m")
    item = message.inputs.add(name="x", datatype=datatype, shape=array.shape)
    values = [v.encode() if datatype == "BYTES" else v for v in array.reshape(-1).tolist()]
    getattr(item.contents, CONTENTS_FIELDS[datatype]).extend(values)
    request = decode_grpc_request(pb.ModelInferRequest.FromString(message.SerializeToString()))
    assert not request.binary_output
    assert_same(request.inputs[0].data, array)
    response = encode_grpc_response("m", "2", request, request.inputs)
    assert not response.raw_output_contents
    output = response.outputs[0]
    got = list(getattr(output.contents, CONTENTS_FIELDS[datatype]))
    assert got == values
    assert list(output.shape) == list(array.shape)


@settings(max_examples=150, deadline=None)
@given(tensors())
def test_grpc_raw_contents_round_trip(tensor: tuple[str, np.ndarray]) -> None:
    datatype, array = tensor
    message = pb.ModelInferRequest(model_name="m")
    message.inputs.add(name="x", datatype=datatype, shape=array.shape)
    message.raw_input_contents.append(encode_raw(array, datatype))
    request = decode_grpc_request(message)
    assert request.binary_output
    assert_same(request.inputs[0].data, array)
    response = encode_grpc_response("m", "2", request, request.inputs)
    assert len(response.raw_output_contents) == 1
    back = decode_raw(
        "x", datatype, list(response.outputs[0].shape), response.raw_output_contents[0]
    )
    assert_same(back, array)


def test_fp16_outputs_travel_raw_even_for_a_contents_request() -> None:
    request = InferRequest(inputs=[], outputs=[])
    half = Tensor("h", "FP16", np.array([1.5, -2.0], dtype=np.float16))
    response = encode_grpc_response("m", "1", request, [half])
    assert response.raw_output_contents[0] == half.data.tobytes()


def test_nested_json_data_is_row_major() -> None:
    body = orjson.dumps(
        {"inputs": [{"name": "x", "datatype": "INT32", "shape": [2, 2], "data": [[1, 2], [3, 4]]}]}
    )
    assert decode_http_request(body).inputs[0].data.tolist() == [[1, 2], [3, 4]]


@pytest.mark.parametrize(
    ("datatype", "data", "error"),
    [
        ("UINT64", [0, 2**63, 2**64 - 1], None),
        # The JSON parser reads integers past 64 bits as floats.
        ("UINT64", [0, 2**64], "UINT64 element 1 must be an integer"),
        ("UINT64", [-1, 2**63], "values out of range for UINT64"),
        ("INT64", [0, 2**63], "values out of range for INT64"),
    ],
)
def test_json_integers_beyond_int64_are_exact_or_rejected(
    datatype: str, data: list[int], error: str | None
) -> None:
    # numpy parses such lists as float64 on its own, which would silently round them.
    # The stdlib writes integers of any size; orjson stops at 64 bits.
    body = json.dumps(
        {"inputs": [{"name": "x", "datatype": datatype, "shape": [len(data)], "data": data}]}
    ).encode()
    if error is None:
        assert decode_http_request(body).inputs[0].data.tolist() == data
    else:
        with pytest.raises(TensorError, match=error):
            decode_http_request(body)


def test_requested_outputs_and_their_binary_flags() -> None:
    body = orjson.dumps(
        {
            "id": "r1",
            "inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1.5]}],
            "outputs": [{"name": "a", "parameters": {"binary_data": True}}, {"name": "b"}],
        }
    )
    request = decode_http_request(body)
    assert request.id == "r1"
    assert request.outputs == [RequestedOutput("a", True), RequestedOutput("b", None)]
    outputs = [
        Tensor("a", "FP32", np.array([1.0], np.float32)),
        Tensor("b", "FP32", np.array([2.0], np.float32)),
    ]
    response, header_length = encode_http_response("m", "1", request, outputs)
    assert header_length is not None
    described = orjson.loads(response[:header_length])
    assert described["id"] == "r1"
    assert described["outputs"][0]["parameters"] == {"binary_data_size": 4}
    assert described["outputs"][1]["data"] == [2.0]
    assert response[header_length:] == np.float32(1.0).tobytes()


# --- errors --------------------------------------------------------------------------


def json_body(**tensor: Any) -> bytes:
    base = {"name": "text", "datatype": "BYTES", "shape": [1], "data": ["hi"]}
    return orjson.dumps({"inputs": [{**base, **tensor}]})


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"{", "request body is not valid JSON"),
        (b"[]", "request body must be a JSON object"),
        (b'{"inputs": []}', "request must have a non-empty 'inputs' list"),
        (json_body(shape=[3]), "input 'text': shape [3] needs 3 elements, data has 1"),
        (json_body(shape=[-1]), "input 'text': shape [-1] must hold non-negative integers"),
        (json_body(shape="1"), "input 'text': shape must be a list of integers"),
        (json_body(datatype="STRING"), "input 'text': unsupported datatype 'STRING'"),
        (json_body(data=[1]), "input 'text': BYTES element 0 must be a string, got an integer"),
        (json_body(data="hi"), "input 'text': data must be a list, got a string"),
        (
            json_body(datatype="INT32", data=[1.5]),
            "input 'text': INT32 element 0 must be an integer, got a number",
        ),
        (
            json_body(datatype="FP32", data=["x"]),
            "input 'text': FP32 element 0 must be a number, got a string",
        ),
        (
            json_body(datatype="BOOL", data=[1]),
            "input 'text': BOOL element 0 must be a boolean, got an integer",
        ),
        (
            json_body(datatype="INT8", data=[300]),
            "input 'text': value 300 is out of range for INT8",
        ),
        (
            json_body(datatype="FP32", shape=[2, 1], data=[[1.0], 2.0]),
            "input 'text': data mixes nested lists and values",
        ),
        (
            json_body(datatype="FP32", shape=[2], data=[[1.0], [2.0]]),
            "input 'text': FP32 element 0 must be a number, got a list",
        ),
        (json_body(name=""), "inputs[0] needs a non-empty string 'name'"),
        (
            orjson.dumps({"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1]}]}),
            "input 'text' has neither data nor binary_data_size",
        ),
    ],
)
def test_json_errors_say_what_is_wrong(body: bytes, message: str) -> None:
    with pytest.raises(TensorError) as info:
        decode_http_request(body)
    assert message in info.value.message


def binary_body(size: int, payload: bytes, **extra: Any) -> tuple[bytes, int]:
    header = orjson.dumps(
        {
            "inputs": [
                {
                    "name": "text",
                    "datatype": "BYTES",
                    "shape": [1],
                    "parameters": {"binary_data_size": size},
                    **extra,
                }
            ]
        }
    )
    return header + payload, len(header)


def test_invalid_utf8_in_binary_bytes_names_the_element_and_byte() -> None:
    body, length = binary_body(6, struct.pack("<I", 2) + b"\xc3\x28")
    with pytest.raises(TensorError) as info:
        decode_http_request(body, length)
    assert info.value.message == (
        "input 'text': BYTES element 0 is not valid UTF-8 (byte 0xc3 at offset 0)"
    )


@pytest.mark.parametrize(
    ("size", "payload", "message"),
    [
        (4, struct.pack("<I", 9), "BYTES element 0 claims 9 bytes, only 0 left"),
        (2, b"ab", "2 bytes cannot hold 1 BYTES elements"),
        (8, struct.pack("<I", 1) + b"abcd", "3 bytes left over after 1 BYTES elements"),
        (99, b"", "binary_data_size 99 runs past the end of the binary data (0 bytes left)"),
    ],
)
def test_binary_data_errors(size: int, payload: bytes, message: str) -> None:
    body, length = binary_body(size, payload)
    with pytest.raises(TensorError) as info:
        decode_http_request(body, length)
    assert message in info.value.message


def test_binary_data_left_over_and_bad_header_length() -> None:
    body, length = binary_body(5, struct.pack("<I", 1) + b"a" + b"extra")
    with pytest.raises(TensorError, match="5 bytes of binary data after the last input"):
        decode_http_request(body, length)
    with pytest.raises(TensorError, match="Inference-Header-Content-Length 999 does not fit"):
        decode_http_request(body, 999)


def test_fixed_size_raw_length_must_match_the_shape() -> None:
    with pytest.raises(TensorError) as info:
        decode_raw("x", "FP32", [2, 3], b"\0" * 10)
    assert info.value.message == "input 'x': 10 bytes of data, but shape [2, 3] of FP32 needs 24"
    with pytest.raises(TensorError, match="BOOL bytes must be 0 or 1"):
        decode_raw("x", "BOOL", [1], b"\x07")


def grpc_request(datatype: str = "FP32", shape: tuple[int, ...] = (2,)) -> pb.ModelInferRequest:
    message = pb.ModelInferRequest(model_name="m")
    message.inputs.add(name="x", datatype=datatype, shape=shape)
    return message


def test_grpc_errors_say_what_is_wrong() -> None:
    message = grpc_request()
    message.inputs[0].contents.fp32_contents.extend([1.0])
    with pytest.raises(
        TensorError, match=r"shape \[2\] needs 2 elements, contents.fp32_contents has 1"
    ):
        decode_grpc_request(message)

    message = grpc_request()
    message.inputs[0].contents.int_contents.extend([1, 2])
    with pytest.raises(
        TensorError,
        match=r"FP32 data belongs in contents\.fp32_contents, not contents\.int_contents",
    ):
        decode_grpc_request(message)

    message = grpc_request("FP16")
    with pytest.raises(TensorError, match="FP16 data must be sent in raw_input_contents"):
        decode_grpc_request(message)

    message = grpc_request()
    message.raw_input_contents.extend([b"\0" * 8, b""])
    with pytest.raises(TensorError, match="1 inputs but 2 raw_input_contents entries"):
        decode_grpc_request(message)

    message = grpc_request("BYTES", (1,))
    message.inputs[0].contents.bytes_contents.append(b"\xff")
    with pytest.raises(TensorError, match="BYTES element 0 is not valid UTF-8"):
        decode_grpc_request(message)

    message = grpc_request("INT8", (1,))
    message.inputs[0].contents.int_contents.append(1000)
    with pytest.raises(TensorError, match="a value is out of range for INT8"):
        decode_grpc_request(message)

    with pytest.raises(TensorError, match="request has no inputs"):
        decode_grpc_request(pb.ModelInferRequest(model_name="m"))


SPECS = (TensorSpec("text", "BYTES", (-1,)),)


def text_tensor(
    name: str = "text", datatype: str = "BYTES", shape: tuple[int, ...] = (1,)
) -> Tensor:
    return Tensor(name, datatype, np.full(shape, "hi", dtype=object))


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        ([text_tensor("txt")], "model 'm' has no input named 'txt'; inputs: text"),
        ([text_tensor(), text_tensor()], "input 'text' is given more than once"),
        ([text_tensor(datatype="FP32")], "input 'text' must be BYTES, got FP32"),
        (
            [text_tensor(shape=(1, 1))],
            "input 'text' has shape [1, 1], model 'm' expects [-1] (-1 = any size)",
        ),
        ([], "missing input 'text'"),
    ],
)
def test_inputs_are_checked_against_the_signature(inputs: list[Tensor], message: str) -> None:
    with pytest.raises(TensorError) as info:
        match_inputs("m", inputs, SPECS)
    assert info.value.message == message


def test_outputs_are_checked_against_the_signature() -> None:
    outputs = (TensorSpec("a", "FP32", (-1,)), TensorSpec("b", "FP32", (-1,)))
    assert select_outputs("m", [], outputs) == list(outputs)
    assert select_outputs("m", [RequestedOutput("b")], outputs) == [outputs[1]]
    with pytest.raises(TensorError, match="model 'm' has no output named 'c'; outputs: a, b"):
        select_outputs("m", [RequestedOutput("c")], outputs)

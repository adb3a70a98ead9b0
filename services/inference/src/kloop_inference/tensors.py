"""Open Inference Protocol (KServe V2) tensors: decode requests, check them against a
model's signature, encode responses. Pure functions, no I/O.

Three wire forms of one tensor:

- JSON (`"data": [...]`, flat or nested row-major);
- the HTTP binary tensor data extension: the JSON header is the first
  `Inference-Header-Content-Length` bytes of the body and each tensor with a
  `binary_data_size` parameter takes that many bytes from the rest, in order;
- gRPC: typed `contents` or `raw_input_contents` / `raw_output_contents`.

Raw tensors are row-major little-endian; BOOL is one byte per element; a BYTES element is
a 4-byte little-endian length followed by that many bytes. BYTES tensors hold UTF-8 text
(ONNX string tensors), decoded to `str` on the way in.

Every problem raises `TensorError` (400 / INVALID_ARGUMENT) naming the tensor and what is
wrong with it.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson

from kloop.oip.v2 import grpc_predict_v2_pb2 as pb
from kloop_core.errors import InvalidArgument

Array = npt.NDArray[Any]

# OIP datatype -> numpy dtype (little-endian on the wire).
DATATYPES: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
    "BYTES": np.dtype(object),
}

# gRPC InferTensorContents field per datatype (narrow types travel widened); FP16 has
# none and must use raw contents.
CONTENTS_FIELDS: dict[str, str] = {
    "BOOL": "bool_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}

MAX_RANK = 32
_LENGTH_PREFIX = struct.Struct("<I")


class TensorError(InvalidArgument):
    """A tensor that cannot be decoded or does not fit the model."""


@dataclass(slots=True)
class Tensor:
    """A decoded tensor: `data` has `shape`; BYTES data is an object array of `str`."""

    name: str
    datatype: str
    data: Array


@dataclass(slots=True)
class RequestedOutput:
    name: str
    # HTTP `binary_data` parameter; None means the request's default.
    binary: bool | None = None


@dataclass(slots=True)
class InferRequest:
    inputs: list[Tensor]
    # Empty means every output of the model.
    outputs: list[RequestedOutput]
    id: str = ""
    # HTTP `binary_data_output`; gRPC: True when inputs came as raw contents.
    binary_output: bool = False


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """One input or output of a model: OIP datatype and shape (-1 = any size; None =
    any rank)."""

    name: str
    datatype: str
    shape: tuple[int, ...] | None

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape or [])}


# --- elements ------------------------------------------------------------------------


def element_count(name: str, shape: Sequence[int]) -> int:
    if len(shape) > MAX_RANK:
        raise TensorError(f"input '{name}': shape has {len(shape)} dimensions, at most {MAX_RANK}")
    return math.prod(shape)


def _check_shape(name: str, shape: object) -> tuple[int, ...]:
    if not isinstance(shape, list | tuple):
        raise TensorError(f"input '{name}': shape must be a list of integers")
    for dim in shape:
        if type(dim) is not int or dim < 0:
            raise TensorError(
                f"input '{name}': shape {list(shape)} must hold non-negative integers"
            )
    return tuple(shape)


def _check_datatype(name: str, datatype: object) -> np.dtype[Any]:
    dtype = DATATYPES.get(datatype) if isinstance(datatype, str) else None
    if dtype is None:
        raise TensorError(
            f"input '{name}': unsupported datatype {datatype!r}; supported: {', '.join(DATATYPES)}"
        )
    return dtype


def _utf8(name: str, index: int, raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise TensorError(
            f"input '{name}': BYTES element {index} is not valid UTF-8 "
            f"(byte 0x{raw[error.start]:02x} at offset {error.start})"
        ) from None


def _object_array(items: list[str], shape: tuple[int, ...]) -> Array:
    array = np.array(items, dtype=object)  # 1-D: numpy does not split str items
    return array if len(shape) == 1 else array.reshape(shape)


def decode_raw(name: str, datatype: str, shape: object, raw: bytes | memoryview) -> Array:
    """A tensor from its raw bytes (gRPC raw contents / HTTP binary data)."""
    dtype = _check_datatype(name, datatype)
    dims = _check_shape(name, shape)
    count = element_count(name, dims)
    if datatype == "BYTES":
        return _object_array(_split_bytes(name, count, bytes(raw)), dims)
    expected = count * dtype.itemsize
    if len(raw) != expected:
        raise TensorError(
            f"input '{name}': {len(raw)} bytes of data, but shape {list(dims)} of {datatype} "
            f"needs {expected}"
        )
    array = np.frombuffer(raw, dtype=dtype)
    if datatype == "BOOL" and array.size and int(np.frombuffer(raw, np.uint8).max()) > 1:
        raise TensorError(f"input '{name}': BOOL bytes must be 0 or 1")
    return array.reshape(dims)


def _split_bytes(name: str, count: int, raw: bytes) -> list[str]:
    if count * _LENGTH_PREFIX.size > len(raw):
        raise TensorError(
            f"input '{name}': {len(raw)} bytes cannot hold {count} BYTES elements "
            "(each needs a 4-byte length prefix)"
        )
    items: list[str] = []
    offset, end = 0, len(raw)
    for index in range(count):
        if offset + 4 > end:
            raise TensorError(
                f"input '{name}': BYTES data ends inside the length prefix of element {index}"
            )
        (length,) = _LENGTH_PREFIX.unpack_from(raw, offset)
        offset += 4
        if offset + length > end:
            raise TensorError(
                f"input '{name}': BYTES element {index} claims {length} bytes, "
                f"only {end - offset} left"
            )
        items.append(_utf8(name, index, raw[offset : offset + length]))
        offset += length
    if offset != end:
        raise TensorError(
            f"input '{name}': {end - offset} bytes left over after {count} BYTES elements"
        )
    return items


def encode_raw(array: Array, datatype: str) -> bytes:
    """The raw bytes of a tensor (inverse of `decode_raw`)."""
    if datatype == "BYTES":
        parts: list[bytes] = []
        pack = _LENGTH_PREFIX.pack
        for item in array.reshape(-1):
            data = item.encode("utf-8") if isinstance(item, str) else bytes(item)
            parts.append(pack(len(data)))
            parts.append(data)
        return b"".join(parts)
    return np.ascontiguousarray(array, dtype=DATATYPES[datatype]).tobytes()


def _flatten(name: str, data: list[Any], rank: int) -> list[Any]:
    """Nested row-major lists -> one flat list (rank levels deep at most)."""
    flat = data
    for _ in range(rank - 1):
        if not flat or type(flat[0]) is not list:
            break
        if not all(type(row) is list for row in flat):
            raise TensorError(f"input '{name}': data mixes nested lists and values")
        flat = [item for row in flat for item in row]
    return flat


def decode_json_data(name: str, datatype: str, shape: object, data: Any) -> Array:
    """A tensor from the `data` of a JSON tensor (flat or nested row-major)."""
    dtype = _check_datatype(name, datatype)
    dims = _check_shape(name, shape)
    count = element_count(name, dims)
    if type(data) is not list:
        raise TensorError(f"input '{name}': data must be a list, got {_json_type(data)}")
    flat = _flatten(name, data, max(len(dims), 1))
    if len(flat) != count:
        raise TensorError(
            f"input '{name}': shape {list(dims)} needs {count} elements, data has {len(flat)}"
        )
    if datatype == "BYTES":
        for index, item in enumerate(flat):
            if type(item) is not str:
                raise TensorError(
                    f"input '{name}': BYTES element {index} must be a string, "
                    f"got {_json_type(item)}"
                )
        return _object_array(flat, dims)
    return _json_numbers(name, datatype, dtype, flat).reshape(dims)


def _json_numbers(name: str, datatype: str, dtype: np.dtype[Any], flat: list[Any]) -> Array:
    # numpy parses the whole list at C speed; only a rejected list is walked in Python to
    # say which element is wrong.
    try:
        parsed = np.asarray(flat)
    except (ValueError, TypeError):
        parsed = np.asarray(flat, dtype=object)
    wanted = dtype.kind
    if wanted in "iu" and parsed.dtype.kind in "fO" and all(type(x) is int for x in flat):
        # Integers beyond int64 make numpy fall back to float64 (losing precision) or
        # object; parse them as the wanted type instead, which range-checks exactly.
        try:
            return np.asarray(flat, dtype=dtype)
        except OverflowError:
            raise TensorError(f"input '{name}': values out of range for {datatype}") from None
    # JSON booleans are only BOOL data, and BOOL data only JSON booleans.
    accepted_kinds = {"b": "b", "i": "iu", "u": "iu", "f": "iuf"}[wanted]
    if parsed.size and (parsed.ndim != 1 or parsed.dtype.kind not in accepted_kinds):
        raise TensorError(f"input '{name}': {_first_rejected(datatype, wanted, flat)}")
    if wanted in "iu" and parsed.size:
        info = np.iinfo(dtype)
        low, high = int(parsed.min()), int(parsed.max())
        if low < info.min or high > info.max:
            bad = low if low < info.min else high
            raise TensorError(f"input '{name}': value {bad} is out of range for {datatype}")
    return parsed.astype(dtype, copy=False)


def _first_rejected(datatype: str, wanted: str, flat: list[Any]) -> str:
    expected = {"b": "a boolean", "i": "an integer", "u": "an integer", "f": "a number"}[wanted]
    for index, item in enumerate(flat):
        if isinstance(item, bool):
            ok = wanted == "b"
        elif isinstance(item, int):
            ok = wanted in "iuf"
        elif isinstance(item, float):
            ok = wanted == "f"
        else:
            ok = False
        if not ok:
            return f"{datatype} element {index} must be {expected}, got {_json_type(item)}"
    return f"values out of range for {datatype}"


def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if value is None:
        return "null"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def json_data(array: Array) -> Any:
    """The flat JSON `data` of a tensor."""
    return array.reshape(-1).tolist()


# --- HTTP ----------------------------------------------------------------------------


def _parameters(owner: str, value: Any) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise TensorError(f"{owner}: parameters must be an object")
    return value


def decode_http_request(body: bytes, header_length: int | None = None) -> InferRequest:
    """Decode a POST .../infer body; `header_length` is Inference-Header-Content-Length."""
    if header_length is None:
        header, binary = body, memoryview(b"")
    else:
        if not 0 < header_length <= len(body):
            raise TensorError(
                f"Inference-Header-Content-Length {header_length} does not fit a body of "
                f"{len(body)} bytes"
            )
        header, binary = body[:header_length], memoryview(body)[header_length:]
    try:
        document = orjson.loads(header)
    except orjson.JSONDecodeError as error:
        raise TensorError(f"request body is not valid JSON: {error}") from None
    if not isinstance(document, dict):
        raise TensorError("request body must be a JSON object")
    raw_inputs = document.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise TensorError("request must have a non-empty 'inputs' list")
    inputs: list[Tensor] = []
    offset = 0
    for position, item in enumerate(raw_inputs):
        if not isinstance(item, dict):
            raise TensorError(f"inputs[{position}] must be an object")
        name = item.get("name")
        if not isinstance(name, str) or not name:
            raise TensorError(f"inputs[{position}] needs a non-empty string 'name'")
        datatype, shape = item.get("datatype"), item.get("shape")
        if not isinstance(datatype, str):
            raise TensorError(f"input '{name}': datatype must be a string such as \"BYTES\"")
        size = _parameters(f"input '{name}'", item.get("parameters")).get("binary_data_size")
        if size is None:
            if "data" not in item:
                raise TensorError(f"input '{name}' has neither data nor binary_data_size")
            data = decode_json_data(name, datatype, shape, item["data"])
        else:
            if type(size) is not int or size < 0:
                raise TensorError(f"input '{name}': binary_data_size must be an integer >= 0")
            if "data" in item:
                raise TensorError(f"input '{name}' has both data and binary_data_size")
            if offset + size > len(binary):
                raise TensorError(
                    f"input '{name}': binary_data_size {size} runs past the end of the "
                    f"binary data ({len(binary) - offset} bytes left)"
                )
            data = decode_raw(name, datatype, shape, binary[offset : offset + size])
            offset += size
        inputs.append(Tensor(name, datatype, data))
    if offset != len(binary):
        raise TensorError(
            f"{len(binary) - offset} bytes of binary data after the last input's binary_data_size"
        )
    parameters = _parameters("request", document.get("parameters"))
    request_id = document.get("id", "")
    if not isinstance(request_id, str):
        raise TensorError("request id must be a string")
    return InferRequest(
        inputs=inputs,
        outputs=_http_requested_outputs(document.get("outputs")),
        id=request_id,
        binary_output=parameters.get("binary_data_output") is True,
    )


def _http_requested_outputs(value: Any) -> list[RequestedOutput]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise TensorError("'outputs' must be a list")
    outputs = []
    for position, item in enumerate(value):
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise TensorError(f"outputs[{position}] must be an object with a string 'name'")
        binary = _parameters(f"output '{item['name']}'", item.get("parameters")).get("binary_data")
        if binary is not None and not isinstance(binary, bool):
            raise TensorError(f"output '{item['name']}': binary_data must be true or false")
        outputs.append(RequestedOutput(item["name"], binary))
    return outputs


def encode_http_response(
    model_name: str,
    model_version: str,
    request: InferRequest,
    outputs: Sequence[Tensor],
) -> tuple[bytes, int | None]:
    """The response body, and the JSON header's length when binary data follows it."""
    binary_by_name = {wanted.name: wanted.binary for wanted in request.outputs}
    tensors: list[dict[str, Any]] = []
    binary_parts: list[bytes] = []
    for tensor in outputs:
        described: dict[str, Any] = {
            "name": tensor.name,
            "datatype": tensor.datatype,
            "shape": list(tensor.data.shape),
        }
        binary = binary_by_name.get(tensor.name)
        if binary if binary is not None else request.binary_output:
            raw = encode_raw(tensor.data, tensor.datatype)
            described["parameters"] = {"binary_data_size": len(raw)}
            binary_parts.append(raw)
        else:
            described["data"] = json_data(tensor.data)
        tensors.append(described)
    document: dict[str, Any] = {
        "model_name": model_name,
        "model_version": model_version,
        "outputs": tensors,
    }
    if request.id:
        document["id"] = request.id
    header = orjson.dumps(document)
    if not binary_parts:
        return header, None
    return b"".join([header, *binary_parts]), len(header)


# --- gRPC ----------------------------------------------------------------------------


def decode_grpc_request(message: pb.ModelInferRequest) -> InferRequest:
    raw_contents = message.raw_input_contents
    if raw_contents and len(raw_contents) != len(message.inputs):
        raise TensorError(
            f"{len(message.inputs)} inputs but {len(raw_contents)} raw_input_contents entries"
        )
    if not message.inputs:
        raise TensorError("request has no inputs")
    inputs: list[Tensor] = []
    for position, item in enumerate(message.inputs):
        name = item.name
        if not name:
            raise TensorError(f"inputs[{position}] needs a name")
        if raw_contents:
            if item.HasField("contents"):
                raise TensorError(
                    f"input '{name}': contents must be empty when raw_input_contents is used"
                )
            data = decode_raw(name, item.datatype, tuple(item.shape), raw_contents[position])
        else:
            data = _decode_contents(name, item.datatype, tuple(item.shape), item.contents)
        inputs.append(Tensor(name, item.datatype, data))
    return InferRequest(
        inputs=inputs,
        outputs=[RequestedOutput(wanted.name) for wanted in message.outputs],
        id=message.id,
        binary_output=bool(raw_contents),
    )


def _decode_contents(
    name: str, datatype: str, shape: tuple[int, ...], contents: pb.InferTensorContents
) -> Array:
    dtype = _check_datatype(name, datatype)
    dims = _check_shape(name, shape)
    count = element_count(name, dims)
    expected_field = CONTENTS_FIELDS.get(datatype)
    if expected_field is None:
        raise TensorError(f"input '{name}': {datatype} data must be sent in raw_input_contents")
    present = [field.name for field, _ in contents.ListFields()]
    wrong = [field for field in present if field != expected_field]
    if wrong:
        raise TensorError(
            f"input '{name}': {datatype} data belongs in contents.{expected_field}, "
            f"not contents.{wrong[0]}"
        )
    values = getattr(contents, expected_field)
    if len(values) != count:
        raise TensorError(
            f"input '{name}': shape {list(dims)} needs {count} elements, "
            f"contents.{expected_field} has {len(values)}"
        )
    if datatype == "BYTES":
        return _object_array([_utf8(name, i, item) for i, item in enumerate(values)], dims)
    array = np.array(values, dtype=_widened(datatype))
    if array.dtype != dtype:
        info = np.iinfo(dtype)
        if array.size and (array.min() < info.min or array.max() > info.max):
            raise TensorError(f"input '{name}': a value is out of range for {datatype}")
        array = array.astype(dtype)
    return array.reshape(dims)


def _widened(datatype: str) -> np.dtype[Any]:
    field = CONTENTS_FIELDS[datatype]
    return {
        "int_contents": np.dtype(np.int32),
        "uint_contents": np.dtype(np.uint32),
    }.get(field, DATATYPES[datatype])


def encode_grpc_response(
    model_name: str,
    model_version: str,
    request: InferRequest,
    outputs: Iterable[Tensor],
) -> pb.ModelInferResponse:
    """Outputs as raw_output_contents when the request used raw inputs, else as typed
    contents (FP16 always raw: it has no contents field)."""
    response = pb.ModelInferResponse(
        model_name=model_name, model_version=model_version, id=request.id
    )
    tensors = list(outputs)
    raw = request.binary_output or any(t.datatype not in CONTENTS_FIELDS for t in tensors)
    for tensor in tensors:
        described = response.outputs.add(
            name=tensor.name, datatype=tensor.datatype, shape=tensor.data.shape
        )
        if raw:
            response.raw_output_contents.append(encode_raw(tensor.data, tensor.datatype))
        elif tensor.datatype == "BYTES":
            described.contents.bytes_contents.extend(
                item.encode("utf-8") if isinstance(item, str) else bytes(item)
                for item in tensor.data.reshape(-1)
            )
        else:
            getattr(described.contents, CONTENTS_FIELDS[tensor.datatype]).extend(
                tensor.data.reshape(-1).tolist()
            )
    return response


# --- model signature -----------------------------------------------------------------


def match_inputs(
    model_name: str, inputs: Sequence[Tensor], specs: Sequence[TensorSpec]
) -> dict[str, Array]:
    """The feed for the model: every declared input exactly once, with its datatype and
    a shape that fits the declared one."""
    by_name = {spec.name: spec for spec in specs}
    feed: dict[str, Array] = {}
    for tensor in inputs:
        spec = by_name.get(tensor.name)
        if spec is None:
            raise TensorError(
                f"model '{model_name}' has no input named '{tensor.name}'; "
                f"inputs: {', '.join(by_name)}"
            )
        if tensor.name in feed:
            raise TensorError(f"input '{tensor.name}' is given more than once")
        if tensor.datatype != spec.datatype:
            raise TensorError(
                f"input '{tensor.name}' must be {spec.datatype}, got {tensor.datatype}"
            )
        if not shape_fits(tensor.data.shape, spec.shape):
            raise TensorError(
                f"input '{tensor.name}' has shape {list(tensor.data.shape)}, model "
                f"'{model_name}' expects {list(spec.shape or [])} (-1 = any size)"
            )
        feed[tensor.name] = tensor.data
    missing = [name for name in by_name if name not in feed]
    if missing:
        raise TensorError(f"missing input {', '.join(repr(name) for name in missing)}")
    return feed


def shape_fits(shape: Sequence[int], declared: Sequence[int] | None) -> bool:
    if declared is None:
        return True
    if len(shape) != len(declared):
        return False
    return all(want in (-1, got) for got, want in zip(shape, declared, strict=True))


def select_outputs(
    model_name: str, requested: Sequence[RequestedOutput], specs: Sequence[TensorSpec]
) -> list[TensorSpec]:
    """The outputs to return, in request order (all, in model order, when none asked)."""
    if not requested:
        return list(specs)
    by_name = {spec.name: spec for spec in specs}
    selected = []
    for wanted in requested:
        spec = by_name.get(wanted.name)
        if spec is None:
            raise TensorError(
                f"model '{model_name}' has no output named '{wanted.name}'; "
                f"outputs: {', '.join(by_name)}"
            )
        selected.append(spec)
    return selected

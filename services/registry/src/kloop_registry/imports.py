"""Bring your own model: what an imported ONNX model is and how its upload is checked.

An imported model arrives as files (model.onnx, and optionally the tokenizer.json of a
text-embedding model) streamed after a header that declares each file's sha256 and size.
Receiving them is plain code over an iterator of parts, so the gRPC edge only translates
messages; every problem is an InvalidArgument naming the file and what is wrong.

The signature stored with the version (signature.json) is read from the graph by
onnxruntime here, never taken from the client: it is what the inference server will see.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

import onnxruntime as ort

from kloop_core.errors import InvalidArgument

MODEL_FILE = "model.onnx"
TOKENIZER_FILE = "tokenizer.json"
IMPORTABLE_FILES = (MODEL_FILE, TOKENIZER_FILE)

# Version tags of imported models (trained ones carry no kloop.kind: "sentiment").
TAG_KIND = "kloop.kind"
TAG_TASK = "kloop.task"
TAG_TOKENIZER_SHA256 = "kloop.tokenizer_sha256"

# What a text-embedding graph may take: the tensors `tokenizers` produces.
TOKENIZER_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
_INTEGER_TYPES = ("tensor(int64)", "tensor(int32)")

_ORT_DATATYPES = {
    "tensor(string)": "BYTES",
    "tensor(bool)": "BOOL",
    "tensor(uint8)": "UINT8",
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(int8)": "INT8",
    "tensor(int16)": "INT16",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(float16)": "FP16",
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
}


class ModelKind(StrEnum):
    SENTIMENT = "sentiment"  # trained by kloop, gated on its holdout
    IMPORTED = "imported"  # brought as an ONNX file, never gated


class Task(StrEnum):
    TEXT_EMBEDDING = "text-embedding"  # has a tokenizer: text in, embedding out
    ONNX = "onnx"  # served with the graph's own signature


NOT_GATED = "imported model: not gated against a holdout (it has none)"


@dataclass(frozen=True)
class DeclaredFile:
    path: str
    sha256: str
    size_bytes: int


@dataclass(frozen=True)
class ImportCommand:
    name: str
    files: tuple[DeclaredFile, ...]
    alias: str = ""
    description: str = ""
    tags: dict[str, str] = field(default_factory=dict)
    actor: str = ""
    reason: str = ""

    def declared(self, path: str) -> DeclaredFile | None:
        return next((f for f in self.files if f.path == path), None)


@dataclass(frozen=True)
class FilePart:
    """Some bytes of one declared file (the gRPC ImportModelData)."""

    path: str
    data: bytes


def check_files(files: Iterable[DeclaredFile], max_bytes: int) -> tuple[DeclaredFile, ...]:
    checked: list[DeclaredFile] = []
    for f in files:
        if f.path not in IMPORTABLE_FILES:
            raise InvalidArgument(
                f"cannot import file {f.path!r}: expected {' and/or '.join(IMPORTABLE_FILES)}"
            )
        if any(c.path == f.path for c in checked):
            raise InvalidArgument(f"file {f.path!r} is declared twice")
        sha256 = f.sha256.lower()
        if len(sha256) != 64 or any(ch not in "0123456789abcdef" for ch in sha256):
            raise InvalidArgument(f"{f.path}: invalid sha256 {f.sha256!r}: 64 hex digits")
        if f.size_bytes <= 0:
            raise InvalidArgument(f"{f.path}: size_bytes must be > 0 (an empty file is no model)")
        if f.size_bytes > max_bytes:
            raise InvalidArgument(
                f"{f.path}: {f.size_bytes} bytes is over the import limit of {max_bytes}"
            )
        checked.append(DeclaredFile(f.path, sha256, f.size_bytes))
    if not any(f.path == MODEL_FILE for f in checked):
        raise InvalidArgument(f"an import needs {MODEL_FILE}")
    return tuple(checked)


def receive_files(command: ImportCommand, parts: Iterator[FilePart], folder: Path) -> None:
    """Write the streamed parts to `folder/<path>`, checking order, sizes and digests."""
    digests = {f.path: hashlib.sha256() for f in command.files}
    sizes = dict.fromkeys(digests, 0)
    finished: set[str] = set()
    current: str | None = None
    out = None
    try:
        for part in parts:
            declared = command.declared(part.path)
            if declared is None:
                raise InvalidArgument(f"data for {part.path!r}, which the header does not declare")
            if part.path != current:
                if part.path in finished:
                    raise InvalidArgument(f"{part.path}: its chunks must come one after another")
                if current is not None:
                    finished.add(current)
                if out is not None:
                    out.close()
                current = part.path
                out = (folder / part.path).open("wb")
            sizes[part.path] += len(part.data)
            if sizes[part.path] > declared.size_bytes:
                raise InvalidArgument(
                    f"{part.path}: more than the declared {declared.size_bytes} bytes"
                )
            digests[part.path].update(part.data)
            assert out is not None
            out.write(part.data)
    finally:
        if out is not None:
            out.close()
    for f in command.files:
        if sizes[f.path] != f.size_bytes:
            raise InvalidArgument(
                f"{f.path}: received {sizes[f.path]} of {f.size_bytes} bytes (upload cut short?)"
            )
        got = digests[f.path].hexdigest()
        if got != f.sha256:
            raise InvalidArgument(f"{f.path}: received bytes have sha256 {got}, not {f.sha256}")


def _specs(nodes: list[Any], side: str) -> list[dict[str, Any]]:
    specs = []
    for node in nodes:
        datatype = _ORT_DATATYPES.get(node.type)
        if datatype is None:
            raise InvalidArgument(
                f"{MODEL_FILE}: {side} {node.name!r} has unsupported type {node.type}"
            )
        shape = node.shape
        dims = None if shape is None else [d if isinstance(d, int) else -1 for d in shape]
        specs.append({"name": node.name, "datatype": datatype, "shape": dims})
    return specs


def read_signature(model_path: Path, tokenizer_path: Path | None) -> dict[str, Any]:
    """The graph's inputs and outputs (OIP datatypes, -1 for dynamic dimensions) and the
    task; InvalidArgument when onnxruntime cannot load the graph or a text-embedding graph
    does not take the tokenizer's tensors."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    try:
        session = ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own untyped errors
        first = str(e).splitlines()[0][:300] if str(e) else type(e).__name__
        raise InvalidArgument(
            f"{MODEL_FILE} is not an ONNX model onnxruntime can load: {first}"
        ) from e
    signature: dict[str, Any] = {
        "inputs": _specs(session.get_inputs(), "input"),
        "outputs": _specs(session.get_outputs(), "output"),
    }
    if tokenizer_path is None:
        return {"task": Task.ONNX.value, **signature}
    _check_tokenizer(tokenizer_path)
    inputs = {node.name: node for node in session.get_inputs()}
    if "input_ids" not in inputs or any(name not in TOKENIZER_INPUTS for name in inputs):
        raise InvalidArgument(
            f"a model imported with a tokenizer must take input_ids (and optionally "
            f"attention_mask, token_type_ids); this one takes {', '.join(inputs)}"
        )
    for node in inputs.values():
        if node.type not in _INTEGER_TYPES or len(node.shape or []) != 2:
            raise InvalidArgument(
                f"input {node.name!r} must be int64 or int32 of shape [batch, sequence], "
                f"is {node.type} {node.shape}"
            )
    return {
        "task": Task.TEXT_EMBEDDING.value,
        **signature,
        "serving_inputs": [{"name": "text", "datatype": "BYTES", "shape": [-1]}],
        "tokenizer": TOKENIZER_FILE,
    }


def _check_tokenizer(path: Path) -> None:
    try:
        doc = json.loads(path.read_bytes())
    except (ValueError, UnicodeDecodeError) as e:
        raise InvalidArgument(f"{TOKENIZER_FILE} is not JSON: {e}") from e
    if not isinstance(doc, dict) or not isinstance(doc.get("model"), dict):
        raise InvalidArgument(
            f"{TOKENIZER_FILE} is not a Hugging Face tokenizers file (no 'model' object)"
        )


def import_tags(signature: dict[str, Any], tokenizer_sha256: str) -> dict[str, str]:
    tags = {TAG_KIND: ModelKind.IMPORTED.value, TAG_TASK: str(signature["task"])}
    if tokenizer_sha256:
        tags[TAG_TOKENIZER_SHA256] = tokenizer_sha256
    return tags


def is_imported(tags: dict[str, str]) -> bool:
    return tags.get(TAG_KIND) == ModelKind.IMPORTED.value

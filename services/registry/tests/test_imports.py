"""Bring your own model: ImportModel over gRPC (real MLflow, real Redis), and the pure
checks of an upload."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from kloop.registry.v1 import registry_pb2 as pb
from kloop.registry.v1.registry_pb2_grpc import RegistryServiceStub
from kloop_core.errors import InvalidArgument
from kloop_core.grpc_server import start_service
from kloop_registry.imports import DeclaredFile, FilePart, ImportCommand, check_files, receive_files
from kloop_registry.main import build_app
from kloop_registry.settings import RegistrySettings

from .onnx_models import TOKENIZER_JSON, keyword_model, token_embedding_model
from .test_grpc_server import history

CHUNK = 1000  # small chunks: a file spans several messages


@pytest.fixture(scope="module")
def stub(settings: RegistrySettings) -> Iterator[RegistryServiceStub]:
    with (
        start_service(build_app(settings), grpc_port=0, http_port=0) as running,
        grpc.insecure_channel(f"127.0.0.1:{running.grpc_port}") as channel,
    ):
        yield RegistryServiceStub(channel)


def declared(path: str, data: bytes) -> pb.ImportedFile:
    return pb.ImportedFile(path=path, sha256=hashlib.sha256(data).hexdigest(), size_bytes=len(data))


def chunks(header: pb.ImportModelHeader, files: dict[str, bytes]) -> Iterator[pb.ImportModelChunk]:
    yield pb.ImportModelChunk(header=header)
    for path, data in files.items():
        for start in range(0, len(data), CHUNK):
            part = pb.ImportModelData(path=path, data=data[start : start + CHUNK])
            yield pb.ImportModelChunk(data=part)


def import_files(
    stub: RegistryServiceStub, name: str, files: dict[str, bytes], **header: object
) -> pb.ImportModelResponse:
    head = pb.ImportModelHeader(
        name=name, files=[declared(p, d) for p, d in files.items()], actor="test", **header
    )
    return stub.ImportModel(chunks(head, files), timeout=60)


def embedder_files(tmp_path: Path, seed: int = 0) -> dict[str, bytes]:
    model = token_embedding_model(tmp_path / f"embedder-{seed}.onnx", seed=seed)
    return {"model.onnx": model.read_bytes(), "tokenizer.json": TOKENIZER_JSON}


def test_import_registers_a_text_embedding_model_with_its_signature_and_alias(
    stub: RegistryServiceStub, tmp_path: Path, model_name: str
) -> None:
    files = embedder_files(tmp_path)
    response = import_files(stub, model_name, files, alias="production", tags={"team": "rag"})

    assert response.created
    version = response.version
    assert version.version == "1" and version.aliases == ["production"]
    assert version.sha256 == hashlib.sha256(files["model.onnx"]).hexdigest()
    assert version.size_bytes == len(files["model.onnx"])
    assert version.tags["kloop.kind"] == "imported"
    assert version.tags["kloop.task"] == "text-embedding"
    assert version.tags["kloop.tokenizer_sha256"] == hashlib.sha256(TOKENIZER_JSON).hexdigest()
    assert version.tags["team"] == "rag"
    signature = json.loads(response.signature_json)
    assert signature["task"] == "text-embedding"
    assert signature["inputs"] == [
        {"name": "input_ids", "datatype": "INT64", "shape": [-1, -1]},
        {"name": "attention_mask", "datatype": "INT64", "shape": [-1, -1]},
    ]
    assert signature["outputs"] == [{"name": "embedding", "datatype": "FP32", "shape": [-1, 8]}]
    assert signature["serving_inputs"] == [{"name": "text", "datatype": "BYTES", "shape": [-1]}]
    assert response.change.alias == "production" and response.change.version == "1"

    # The trail says it was imported and not gated, and that the alias moved.
    entries = history(stub, model_name)
    assert [e.action for e in entries] == ["model_imported", "alias_set"]
    assert entries[0].details["gated"] == "false"
    assert "not gated against a holdout" in entries[0].details["explanation"]
    assert entries[1].details["gated"] == "false" and entries[1].actor == "test"

    # The inference server's path: resolve by alias, download by digest and by path.
    resolved = stub.ResolveAlias(pb.ResolveAliasRequest(name=model_name, alias="production"))
    assert resolved.sha256 == version.sha256
    download = stub.DownloadArtifact(pb.DownloadArtifactRequest(sha256=version.sha256))
    assert b"".join(c.data for c in download) == files["model.onnx"]
    tokenizer = stub.DownloadArtifact(
        pb.DownloadArtifactRequest(name=model_name, version="1", path="tokenizer.json")
    )
    assert b"".join(c.data for c in tokenizer) == TOKENIZER_JSON
    stored = stub.DownloadArtifact(
        pb.DownloadArtifactRequest(name=model_name, version="1", path="signature.json")
    )
    assert json.loads(b"".join(c.data for c in stored)) == signature

    # Same files again: the same version, nothing new recorded.
    again = import_files(stub, model_name, files, alias="production")
    assert not again.created and again.version.version == "1"
    assert len(history(stub, model_name)) == 2

    # Imported models are not gated: promotion refuses clearly.
    with pytest.raises(grpc.RpcError) as info:
        stub.Promote(pb.PromoteRequest(name=model_name, version="1"), timeout=30)
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "imported model" in info.value.details()

    # A new version (other weights) moves the alias; rollback works as for any model.
    second = import_files(stub, model_name, embedder_files(tmp_path, seed=1), alias="production")
    assert second.version.version == "2" and second.change.previous_version == "1"
    rolled = stub.Rollback(pb.RollbackRequest(name=model_name, alias="production"), timeout=30)
    assert rolled.version == "1"


def test_import_without_tokenizer_keeps_the_graphs_own_signature(
    stub: RegistryServiceStub, tmp_path: Path, model_name: str
) -> None:
    model = keyword_model(tmp_path / "keyword.onnx").read_bytes()
    response = import_files(stub, model_name, {"model.onnx": model})
    assert response.version.tags["kloop.task"] == "onnx"
    assert not response.version.aliases and not response.HasField("change")
    signature = json.loads(response.signature_json)
    assert signature["inputs"] == [{"name": "text", "datatype": "BYTES", "shape": [-1]}]
    assert "serving_inputs" not in signature


def bad_import(stub: RegistryServiceStub, messages: list[pb.ImportModelChunk]) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        stub.ImportModel(iter(messages), timeout=30)
    return info.value


def test_bad_imports_are_invalid_arguments_and_create_nothing(
    stub: RegistryServiceStub, tmp_path: Path, model_name: str
) -> None:
    model = token_embedding_model(tmp_path / "m.onnx").read_bytes()
    garbage = b"this is not an onnx file at all"

    def header(**fields: object) -> pb.ImportModelHeader:
        values: dict[str, object] = {
            "name": model_name,
            "files": [declared("model.onnx", model)],
            **fields,
        }
        return pb.ImportModelHeader(**values)

    def data(path: str, payload: bytes) -> pb.ImportModelChunk:
        return pb.ImportModelChunk(data=pb.ImportModelData(path=path, data=payload))

    cases = {
        "not an ONNX model": [
            pb.ImportModelChunk(header=header(files=[declared("model.onnx", garbage)])),
            data("model.onnx", garbage),
        ],
        "sha256": [
            pb.ImportModelChunk(header=header()),
            data("model.onnx", model[:-1] + b"\0"),
        ],
        "received": [pb.ImportModelChunk(header=header()), data("model.onnx", model[:10])],
        "must start with": [data("model.onnx", model)],
        "invalid model name": [pb.ImportModelChunk(header=header(name="bad name!"))],
        "invalid alias": [pb.ImportModelChunk(header=header(alias="latest"))],
        "needs model.onnx": [pb.ImportModelChunk(header=header(files=[]))],
        "cannot import file": [pb.ImportModelChunk(header=header(files=[declared("../x", model)]))],
        "does not declare": [pb.ImportModelChunk(header=header()), data("other", b"x")],
        "one header": [pb.ImportModelChunk(header=header()), pb.ImportModelChunk(header=header())],
        "must take input_ids": [
            pb.ImportModelChunk(
                header=header(
                    files=[
                        declared("model.onnx", keyword_model(tmp_path / "k.onnx").read_bytes()),
                        declared("tokenizer.json", TOKENIZER_JSON),
                    ]
                )
            ),
            data("model.onnx", (tmp_path / "k.onnx").read_bytes()),
            data("tokenizer.json", TOKENIZER_JSON),
        ],
        "tokenizers file": [
            pb.ImportModelChunk(
                header=header(
                    files=[declared("model.onnx", model), declared("tokenizer.json", b"[1]")]
                )
            ),
            data("model.onnx", model),
            data("tokenizer.json", b"[1]"),
        ],
    }
    for expected, messages in cases.items():
        error = bad_import(stub, messages)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, (expected, error.details())
        assert expected in (error.details() or ""), (expected, error.details())
    with pytest.raises(grpc.RpcError) as info:
        stub.ListVersions(pb.ListVersionsRequest(name=model_name), timeout=10)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


# --- pure checks -----------------------------------------------------------------------


def test_check_files_validates_the_declaration() -> None:
    good = DeclaredFile("model.onnx", "A" * 64, 10)
    assert check_files([good], 100)[0].sha256 == "a" * 64
    for files, message in [
        ([DeclaredFile("model.onnx", "a" * 64, 0)], "size_bytes must be > 0"),
        ([DeclaredFile("model.onnx", "a" * 64, 101)], "over the import limit"),
        ([DeclaredFile("model.onnx", "xyz", 10)], "invalid sha256"),
        ([good, good], "declared twice"),
        ([DeclaredFile("tokenizer.json", "a" * 64, 10)], "needs model.onnx"),
    ]:
        with pytest.raises(InvalidArgument, match=message):
            check_files(files, 100)


def test_receive_files_refuses_interleaved_or_oversized_parts(tmp_path: Path) -> None:
    a, b = b"aaaa", b"bbbb"
    command = ImportCommand(
        "m",
        (
            DeclaredFile("model.onnx", hashlib.sha256(a).hexdigest(), 4),
            DeclaredFile("tokenizer.json", hashlib.sha256(b).hexdigest(), 4),
        ),
    )
    receive_files(
        command,
        iter(
            [
                FilePart("model.onnx", a[:2]),
                FilePart("model.onnx", a[2:]),
                FilePart("tokenizer.json", b),
            ]
        ),
        tmp_path,
    )
    assert (tmp_path / "model.onnx").read_bytes() == a
    interleaved = [
        FilePart("model.onnx", a[:2]),
        FilePart("tokenizer.json", b),
        FilePart("model.onnx", a[2:]),
    ]
    with pytest.raises(InvalidArgument, match="one after another"):
        receive_files(command, iter(interleaved), tmp_path)
    with pytest.raises(InvalidArgument, match="more than the declared"):
        receive_files(command, iter([FilePart("model.onnx", a + a)]), tmp_path)

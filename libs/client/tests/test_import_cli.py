"""`kloop models import` with bad input: a clear message, a non-zero exit, no traceback.
(The successful path, through a real registry to the inference server, is tested in
services/inference/tests/test_embedding_import.py.)"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import onnx
import pytest
from onnx import TensorProto, helper

from kloop_client.import_cli import ImportFileError, describe_onnx
from kloop_client.local import free_port

KLOOP = [sys.executable, "-m", "kloop_client.cli"]


def kloop(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*KLOOP, *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={"COLUMNS": "200", "PATH": "/usr/bin:/bin"},
    )


@pytest.fixture(scope="module")
def model_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "identity",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path = tmp_path_factory.mktemp("models") / "identity.onnx"
    onnx.save(model, path)
    return path


def test_describe_onnx_reads_the_signature(model_file: Path) -> None:
    summary = describe_onnx(model_file)
    assert [(t.name, t.datatype, t.shape) for t in summary.inputs] == [("x", "FLOAT", ["N", 3])]
    assert summary.opset == 17


@pytest.mark.parametrize("content", [b"", b"hello, not a model\n", b"\x08\x07"])
def test_describe_onnx_refuses_what_is_not_a_model(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "fake.onnx"
    path.write_bytes(content)
    with pytest.raises(ImportFileError, match="is not an ONNX model"):
        describe_onnx(path)


def assert_clear_failure(result: subprocess.CompletedProcess[str], message: str, code: int) -> None:
    assert result.returncode == code, result.stdout + result.stderr
    assert message in result.stderr, result.stderr
    assert "Traceback" not in result.stdout + result.stderr


def test_bad_input_is_a_clear_error(tmp_path: Path, model_file: Path) -> None:
    text = tmp_path / "notes.onnx"
    text.write_text("just some text\n")
    not_json = tmp_path / "tokenizer.json"
    not_json.write_text("{not json")
    cases = [
        (["models", "import", str(text), "--name", "m"], "is not an ONNX model"),
        (["models", "import", str(tmp_path / "missing.onnx"), "--name", "m"], "no such file"),
        (["models", "import", str(tmp_path), "--name", "m"], "not a file"),
        (["models", "import", str(model_file), "--name", "bad name!"], "invalid model name"),
        (["models", "import", str(model_file), "--name", "m", "--alias", "v1"], "invalid alias"),
        (
            ["models", "import", str(model_file), "--name", "m", "--tokenizer", str(not_json)],
            "is not JSON",
        ),
    ]
    for args, message in cases:
        assert_clear_failure(kloop(*args), message, 2)


def test_missing_name_is_a_usage_error(model_file: Path) -> None:
    result = kloop("models", "import", str(model_file))
    assert result.returncode == 2 and "--name" in result.stderr
    assert "Traceback" not in result.stderr


def test_an_unreachable_registry_fails_fast(model_file: Path) -> None:
    registry = f"127.0.0.1:{free_port()}"  # nothing listens there
    result = kloop("models", "import", str(model_file), "--name", "m", "--registry", registry)
    assert_clear_failure(result, "UNAVAILABLE", 1)
    assert "is the registry up" in result.stderr

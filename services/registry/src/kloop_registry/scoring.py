"""Scoring an ONNX model on a holdout with onnxruntime (the gate's only compute).

The model contract: one string tensor input of shape [N] (raw text), one output with
P(positive) of shape [N] or [N, 1]. Names come from signature.json when it declares
them, else the graph's first input and output.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

_BATCH = 1024


class ScoringError(ValueError):
    """The model cannot be loaded or does not honour the contract."""


def signature_names(raw: bytes | None) -> tuple[str | None, str | None]:
    """(input name, output name) declared by a signature.json, None where not declared.

    Accepts `{"inputs": [{"name": ...}], "outputs": [...]}` (first entry used) and
    `{"inputs": {"<name>": {...}}, ...}`.
    """
    if not raw:
        return None, None
    try:
        doc = json.loads(raw)
    except ValueError as e:
        raise ScoringError(f"signature.json is not JSON: {e}") from e
    if not isinstance(doc, dict):
        raise ScoringError("signature.json must be an object")
    return _first_name(doc.get("inputs")), _first_name(doc.get("outputs"))


def _first_name(spec: Any) -> str | None:
    if isinstance(spec, list) and spec and isinstance(spec[0], dict):
        name = spec[0].get("name")
        return str(name) if name else None
    if isinstance(spec, dict) and spec:
        return str(next(iter(spec)))
    return None


def predict_proba(
    model_path: Path,
    texts: Sequence[str],
    *,
    input_name: str | None = None,
    output_name: str | None = None,
) -> np.ndarray:
    """P(positive) for each text, as float64 of shape [N]."""
    options = ort.SessionOptions()
    # Scoring is a background step of a promotion: leave cores to serving work.
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    try:
        session = ort.InferenceSession(
            str(model_path), sess_options=options, providers=["CPUExecutionProvider"]
        )
    except Exception as e:  # onnxruntime raises its own untyped exceptions
        raise ScoringError(f"onnxruntime cannot load the model: {e}") from e
    inputs = {i.name for i in session.get_inputs()}
    outputs = {o.name for o in session.get_outputs()}
    input_name = input_name or session.get_inputs()[0].name
    output_name = output_name or session.get_outputs()[0].name
    if input_name not in inputs or output_name not in outputs:
        raise ScoringError(
            f"signature names {input_name!r} -> {output_name!r} are not in the graph "
            f"(inputs {sorted(inputs)}, outputs {sorted(outputs)})"
        )
    parts = []
    for start in range(0, len(texts), _BATCH):
        batch = np.asarray(list(texts[start : start + _BATCH]), dtype=object)
        try:
            (out,) = session.run([output_name], {input_name: batch})
        except Exception as e:
            raise ScoringError(f"onnxruntime failed to score the holdout: {e}") from e
        p = np.asarray(out, dtype=np.float64)
        if p.ndim == 2 and p.shape[1] == 1:
            p = p[:, 0]
        if p.shape != (len(batch),):
            raise ScoringError(
                f"output {output_name!r} has shape {p.shape}, expected [N] or [N, 1]"
            )
        parts.append(p)
    return np.concatenate(parts) if parts else np.zeros(0)

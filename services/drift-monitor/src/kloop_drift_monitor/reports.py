"""Evidently data-drift reports: a window's sampled rows against the version's holdout.

Reference rows: the honest option is real rows, so they are computed from the
version's own holdout (holdout.jsonl, the texts its reference profile was built from)
with its own model (model.json): length and oov_rate by `kloop_model.profile.features`
and the score by the NumPy model, which the ONNX graph served matches within the
parity tolerance checked at training. Nothing is re-sampled from the profile's
histograms. Current rows: the bottom-k-by-hash sample of the last window (uniform over
the window); oov_rate only when every sampled event carried its text.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np

from kloop_drift_monitor.windows import SampleRow
from kloop_model.classifier import SentimentClassifier
from kloop_model.profile import features

Rows = dict[str, list[float]]
Format = Literal["html", "json"]


def reference_rows(model_document: Mapping[str, Any], texts: Sequence[str]) -> Rows:
    model = SentimentClassifier.from_dict(model_document)
    per_text = features(model, texts)
    return {
        "length": per_text["length"].astype(np.float64).tolist(),
        "oov_rate": per_text["oov_rate"].tolist(),
        "score": model.predict_proba(texts).tolist(),
    }


def current_rows(sample: Sequence[SampleRow]) -> Rows:
    rows: Rows = {
        "length": [float(length) for _, length, _, _ in sample],
        "score": [score for _, _, score, _ in sample],
    }
    if sample and all(oov is not None for _, _, _, oov in sample):
        rows["oov_rate"] = [float(oov) for _, _, _, oov in sample if oov is not None]
    return rows


def render_report(reference: Rows, current: Rows, fmt: Format) -> bytes:
    """The Evidently DataDriftPreset report over the columns both sides have."""
    # Evidently takes seconds and hundreds of MB to import; only reports need it.
    os.environ.setdefault("DO_NOT_TRACK", "1")
    import pandas as pd
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    columns = [c for c in ("length", "oov_rate", "score") if c in reference and c in current]
    definition = DataDefinition(numerical_columns=columns)
    snapshot = Report([DataDriftPreset()]).run(
        current_data=Dataset.from_pandas(
            pd.DataFrame({c: current[c] for c in columns}), data_definition=definition
        ),
        reference_data=Dataset.from_pandas(
            pd.DataFrame({c: reference[c] for c in columns}), data_definition=definition
        ),
    )
    text: str = snapshot.json() if fmt == "json" else snapshot.get_html_str(as_iframe=False)
    return text.encode()

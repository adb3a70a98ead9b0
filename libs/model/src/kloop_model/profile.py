"""The drift reference profile: what the holdout looked like to the model.

Built at training time on the held-out texts and the model's scores for them, stored as
JSON beside the model, and compared by the drift monitor with windows of live traffic.
Per-text features (`features`) and the binning (`bin_counts`, fixed edges) live here so
that the training side and the monitor compute and bin them identically; the drift
statistics themselves (PSI, KS, ...) belong to the monitor.

Binning rule (`bin_counts`): bin i holds values in ``[edges[i], edges[i+1])``, the last
bin is closed on the right, and values outside ``[edges[0], edges[-1]]`` are clipped into
the first or last bin, so every value lands in exactly one bin.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from kloop_model.classifier import SentimentClassifier, TokenCounts
from kloop_model.text import TOKENIZER_ID

PROFILE_VERSION = 1

# Token counts per text; the last bin holds 256 tokens and more.
LENGTH_EDGES: tuple[float, ...] = (0, 1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 128, 256, 512)
# Per-text fraction of tokens not in the vocabulary (0 for a text with no tokens).
OOV_RATE_EDGES: tuple[float, ...] = tuple(np.round(np.linspace(0.0, 1.0, 11), 10).tolist())
# P(positive).
SCORE_EDGES: tuple[float, ...] = tuple(np.round(np.linspace(0.0, 1.0, 11), 10).tolist())
QUANTILES: tuple[float, ...] = (0.05, 0.25, 0.5, 0.75, 0.95)
DEFAULT_TOP_K = 50

FEATURE_EDGES: dict[str, tuple[float, ...]] = {
    "length": LENGTH_EDGES,
    "oov_rate": OOV_RATE_EDGES,
    "score": SCORE_EDGES,
}

FloatArray = npt.NDArray[np.float64]


def bin_counts(values: npt.ArrayLike, edges: Sequence[float]) -> npt.NDArray[np.int64]:
    """Counts per bin of `values` on `edges` (see the module docstring for the rule).
    NaN values are rejected."""
    edge_array = np.asarray(edges, dtype=np.float64)
    if edge_array.ndim != 1 or len(edge_array) < 2 or not (np.diff(edge_array) > 0).all():
        raise ValueError("edges must be a strictly increasing sequence of at least 2 numbers")
    value_array = np.asarray(values, dtype=np.float64).reshape(-1)
    if np.isnan(value_array).any():
        raise ValueError("values must not be NaN")
    n_bins = len(edge_array) - 1
    # side="right": a value equal to edges[i] belongs to bin i; clip puts edges[-1] and
    # anything beyond into the last bin, anything below edges[0] into the first.
    indices = np.clip(np.searchsorted(edge_array, value_array, side="right") - 1, 0, n_bins - 1)
    return np.bincount(indices, minlength=n_bins).astype(np.int64)


def histogram(values: npt.ArrayLike, edges: Sequence[float]) -> dict[str, Any]:
    """``{"edges", "counts", "fractions"}`` of `values` (fractions all 0 when empty)."""
    counts = bin_counts(values, edges)
    total = int(counts.sum())
    fractions = counts / total if total else np.zeros(len(counts))
    return {
        "edges": [float(edge) for edge in edges],
        "counts": counts.tolist(),
        "fractions": fractions.tolist(),
    }


def features_from_counts(counts: TokenCounts) -> dict[str, npt.NDArray[Any]]:
    """Per-text ``length`` (int64 token count) and ``oov_rate`` (float64 fraction of tokens
    outside the vocabulary; 0.0 for a text without tokens)."""
    lengths = counts.lengths
    out_of_vocab = lengths - counts.in_vocab_lengths
    safe_lengths = np.maximum(lengths, 1)
    oov_rate = np.where(lengths > 0, out_of_vocab / safe_lengths, 0.0).astype(np.float64)
    return {"length": lengths.astype(np.int64), "oov_rate": oov_rate}


def features(model: SentimentClassifier, texts: Sequence[str]) -> dict[str, npt.NDArray[Any]]:
    """Per-text drift features for `texts`: see `features_from_counts`. The drift monitor
    calls this on live texts with the model version that served them."""
    return features_from_counts(model.token_counts(texts))


def _summary(values: FloatArray, edges: Sequence[float]) -> dict[str, Any]:
    summary = histogram(values, edges)
    if len(values):
        quantile_values = np.quantile(values, QUANTILES)
        summary["quantiles"] = {
            f"p{round(q * 100):02d}": float(v)
            for q, v in zip(QUANTILES, quantile_values, strict=True)
        }
        summary["mean"] = float(values.mean())
    else:
        summary["quantiles"] = {f"p{round(q * 100):02d}": None for q in QUANTILES}
        summary["mean"] = None
    return summary


def build_reference_profile(
    model: SentimentClassifier,
    texts: Sequence[str],
    scores: npt.ArrayLike,
    *,
    top_k: int = DEFAULT_TOP_K,
) -> dict[str, Any]:
    """The JSON-serialisable reference profile of `texts` (the holdout) and the model's
    `scores` (P(positive)) for them:

    - ``sample_count``;
    - ``features.length`` / ``features.oov_rate`` / ``features.score``: histogram on the
      fixed edges (``edges``, ``counts``, ``fractions``), ``quantiles`` (p05..p95), ``mean``;
    - ``tokens``: ``total`` token count, ``oov_mass`` (share of all tokens outside the
      vocabulary), ``frequencies`` of the `top_k` most frequent in-vocabulary tokens
      (count / all tokens, most frequent first, ties by token);
    - ``predicted_positive_rate`` (score >= 0.5), ``tokenizer``, ``vocab_size``.
    """
    if top_k < 0:
        raise ValueError("top_k must be >= 0")
    score_array = np.asarray(scores, dtype=np.float64).reshape(-1)
    if len(score_array) != len(texts):
        raise ValueError(f"{len(texts)} texts but {len(score_array)} scores")
    if not np.isfinite(score_array).all() or (score_array < 0).any() or (score_array > 1).any():
        raise ValueError("scores must be probabilities in [0, 1]")
    counts = model.token_counts(texts)
    per_text = features_from_counts(counts)
    total_tokens = int(counts.lengths.sum())
    in_vocab_tokens = len(counts.token_ids)
    token_frequencies = np.bincount(counts.token_ids, minlength=model.vocab_size)
    # Most frequent first; ties by vocabulary token so the profile is deterministic.
    ranked = sorted(
        (int(-count), model.vocab[token_id])
        for token_id, count in enumerate(token_frequencies.tolist())
        if count > 0
    )[:top_k]
    return {
        "profile_version": PROFILE_VERSION,
        "tokenizer": TOKENIZER_ID,
        "vocab_size": model.vocab_size,
        "sample_count": len(texts),
        "features": {
            "length": _summary(per_text["length"].astype(np.float64), LENGTH_EDGES),
            "oov_rate": _summary(per_text["oov_rate"], OOV_RATE_EDGES),
            "score": _summary(score_array, SCORE_EDGES),
        },
        "tokens": {
            "total": total_tokens,
            "top_k": top_k,
            "frequencies": {
                token: -negative_count / total_tokens for negative_count, token in ranked
            },
            "oov_mass": (total_tokens - in_vocab_tokens) / total_tokens if total_tokens else 0.0,
        },
        "predicted_positive_rate": float((score_array >= 0.5).mean()) if len(texts) else None,
    }

"""The promotion gate as pure functions: holdout parsing and the approve/reject decision.

Scoring (onnxruntime) and I/O live elsewhere; this module only sees numbers.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum


class Direction(StrEnum):
    HIGHER = "higher"
    LOWER = "lower"


# Which way is better, for every metric kloop_model.metrics.evaluate reports.
METRIC_DIRECTIONS: Mapping[str, Direction] = {
    "accuracy": Direction.HIGHER,
    "precision": Direction.HIGHER,
    "recall": Direction.HIGHER,
    "f1": Direction.HIGHER,
    "roc_auc": Direction.HIGHER,
    "log_loss": Direction.LOWER,
}

# Float noise must not turn "improves by exactly the margin" into a rejection.
_TOLERANCE = 1e-12


class HoldoutError(ValueError):
    """The stored holdout cannot be used to score models."""


@dataclass(frozen=True)
class Holdout:
    texts: list[str]
    labels: list[int]
    digest: str

    def __len__(self) -> int:
        return len(self.labels)


@dataclass(frozen=True)
class GateResult:
    approved: bool
    metric: str
    candidate_value: float
    baseline_value: float | None
    margin: float
    # Positive means the candidate is better, whatever the metric's direction.
    improvement: float | None
    explanation: str


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def parse_holdout(data: bytes) -> Holdout:
    """JSON lines of {"text": str, "label": 0|1}; blank lines are ignored."""
    texts: list[str] = []
    labels: list[int] = []
    for number, line in enumerate(data.decode("utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise HoldoutError(f"holdout line {number}: not JSON ({e.msg})") from e
        if not isinstance(row, dict):
            raise HoldoutError(f"holdout line {number}: expected an object")
        text, label = row.get("text"), row.get("label")
        if not isinstance(text, str):
            raise HoldoutError(f"holdout line {number}: 'text' must be a string")
        # bool is an int subclass; true/false are not labels.
        if isinstance(label, bool) or label not in (0, 1):
            raise HoldoutError(f"holdout line {number}: 'label' must be 0 or 1")
        texts.append(text)
        labels.append(int(label))
    if not labels:
        raise HoldoutError("holdout is empty")
    return Holdout(texts=texts, labels=labels, digest=sha256_hex(data))


def improvement(metric: str, candidate: float, baseline: float) -> float:
    """How much better the candidate is than the baseline (negative: worse)."""
    if METRIC_DIRECTIONS[metric] is Direction.HIGHER:
        return candidate - baseline
    return baseline - candidate


def decide(
    *,
    metric: str,
    margin: float,
    candidate_version: str,
    candidate_metrics: Mapping[str, float],
    baseline_alias: str,
    baseline_version: str | None,
    baseline_metrics: Mapping[str, float] | None,
) -> GateResult:
    """Approve iff the candidate beats the baseline on `metric` by at least `margin`.

    With no baseline (nobody holds `baseline_alias`) the candidate is approved as the
    first version, provided its own metric is a number.
    """
    if metric not in METRIC_DIRECTIONS:
        raise ValueError(f"unknown metric {metric!r}")
    cand = float(candidate_metrics[metric])
    direction = METRIC_DIRECTIONS[metric].value
    if not math.isfinite(cand):
        return GateResult(
            approved=False,
            metric=metric,
            candidate_value=cand,
            baseline_value=None if baseline_metrics is None else float(baseline_metrics[metric]),
            margin=margin,
            improvement=None,
            explanation=f"rejected: candidate v{candidate_version} {metric} is {cand}",
        )
    if baseline_metrics is None or baseline_version is None:
        return GateResult(
            approved=True,
            metric=metric,
            candidate_value=cand,
            baseline_value=None,
            margin=margin,
            improvement=None,
            explanation=(
                f"approved as the first version: no version holds alias {baseline_alias!r}; "
                f"candidate v{candidate_version} {metric}={cand:.4f}"
            ),
        )
    base = float(baseline_metrics[metric])
    gain = improvement(metric, cand, base)
    # NaN compares false: an unmeasurable baseline rejects rather than waves through.
    approved = gain >= margin - _TOLERANCE
    verdict = (
        f"{'approved' if approved else 'rejected'}: candidate v{candidate_version} "
        f"{metric}={cand:.4f} vs baseline v{baseline_version} ({baseline_alias}) "
        f"{metric}={base:.4f}; improvement {gain:+.4f} "
        f"{'>=' if approved else '<'} margin {margin:.4f} ({direction} is better)"
    )
    return GateResult(
        approved=approved,
        metric=metric,
        candidate_value=cand,
        baseline_value=base,
        margin=margin,
        improvement=gain,
        explanation=verdict,
    )

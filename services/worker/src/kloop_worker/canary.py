"""Canary analysis as plain functions: prediction events of the canary and production
versions over the same window -> per-version statistics -> a verdict with its numbers.

Checks (thresholds in `Thresholds`):
- traffic: both versions served at least `min_events` predictions in the window;
- error rate: canary's minus production's at most `max_error_rate_increase`;
- latency: canary p95 at most `max_latency_ratio` x production p95 + `latency_slack`;
- score distribution: two-sample Kolmogorov-Smirnov statistic at most `max_score_ks`;
- agreement: on the same probe texts, the share of equal labels at least
  `min_agreement` (events cannot give it: each request went to one version only).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, slots=True)
class Sample:
    """One prediction event: which version answered, how, and how fast."""

    alias: str
    version: str
    score: float | None  # None: the answer was an error or not a usable score
    latency_seconds: float | None


def parse_event(fields: Mapping[str, str], model: str) -> Sample | None:
    """A Sample from a gateway prediction event of `model` (None: another model or no
    alias/version). An event with an `error` field, or a score that is not a finite
    number in [0, 1], counts as an error."""
    if fields.get("model") != model or not fields.get("alias") or not fields.get("version"):
        return None
    score = _number(fields.get("score"))
    if fields.get("error") or score is None or not 0.0 <= score <= 1.0:
        score = None
    latency = _number(fields.get("latency_seconds"))
    return Sample(
        fields["alias"], fields["version"], score, latency if latency and latency >= 0 else None
    )


def _number(raw: str | None) -> float | None:
    try:
        value = float(raw) if raw is not None else None
    except ValueError:
        return None
    return value if value is not None and math.isfinite(value) else None


@dataclass(frozen=True, slots=True)
class VersionStats:
    events: int
    errors: int
    latency_p50: float | None
    latency_p95: float | None
    scores: tuple[float, ...]

    @property
    def error_rate(self) -> float:
        return self.errors / self.events if self.events else 0.0


def version_stats(samples: Iterable[Sample]) -> VersionStats:
    rows = list(samples)
    latencies = [s.latency_seconds for s in rows if s.latency_seconds is not None]
    scores = tuple(s.score for s in rows if s.score is not None)
    return VersionStats(
        events=len(rows),
        errors=len(rows) - len(scores),
        latency_p50=_quantile(latencies, 0.5),
        latency_p95=_quantile(latencies, 0.95),
        scores=scores,
    )


def _quantile(values: Sequence[float], q: float) -> float | None:
    return float(np.quantile(values, q)) if values else None


def split_samples(
    samples: Iterable[Sample], *, canary_version: str, production_version: str
) -> tuple[VersionStats, VersionStats]:
    """(canary, production) statistics: only events of those versions under those
    aliases count (an alias moved by hand mid-window must not mix versions)."""
    canary, production = [], []
    for sample in samples:
        if sample.alias == "canary" and sample.version == canary_version:
            canary.append(sample)
        elif sample.alias == "production" and sample.version == production_version:
            production.append(sample)
    return version_stats(canary), version_stats(production)


def ks_statistic(a: Sequence[float], b: Sequence[float]) -> float:
    """Two-sample Kolmogorov-Smirnov statistic: the largest gap between the empirical
    CDFs (0 = same distribution, 1 = disjoint). 0 when either sample is empty."""
    if not a or not b:
        return 0.0
    x, y = np.sort(np.asarray(a, float)), np.sort(np.asarray(b, float))
    points = np.concatenate([x, y])
    cdf_x = np.searchsorted(x, points, side="right") / len(x)
    cdf_y = np.searchsorted(y, points, side="right") / len(y)
    return float(np.max(np.abs(cdf_x - cdf_y)))


def agreement(a: Sequence[float], b: Sequence[float], threshold: float) -> float:
    """Share of positions where both scores fall on the same side of `threshold`."""
    if len(a) != len(b):
        raise ValueError("agreement needs paired scores")
    if not a:
        return 1.0
    same = (np.asarray(a) >= threshold) == (np.asarray(b) >= threshold)
    return float(np.mean(same))


@dataclass(frozen=True, slots=True)
class Thresholds:
    min_events: int
    max_error_rate_increase: float
    max_latency_ratio: float
    latency_slack_seconds: float
    max_score_ks: float
    min_agreement: float


@dataclass(frozen=True)
class Verdict:
    passed: bool
    enough_traffic: bool
    failures: tuple[str, ...]
    numbers: dict[str, float]

    def summary(self) -> str:
        """One line with every number, for audit reasons."""
        n = self.numbers
        parts = [
            f"events {n['canary_events']:.0f}/{n['production_events']:.0f}",
            f"error rate {n['canary_error_rate']:.4f}/{n['production_error_rate']:.4f}",
        ]
        if "canary_latency_p95" in n and "production_latency_p95" in n:
            parts.append(
                f"p95 latency {n['canary_latency_p95'] * 1000:.1f}/"
                f"{n['production_latency_p95'] * 1000:.1f} ms"
            )
        parts.append(f"score KS {n['score_ks']:.3f}")
        if "agreement" in n:
            parts.append(f"agreement {n['agreement']:.3f}")
        verdict = "passed" if self.passed else "failed: " + "; ".join(self.failures)
        return f"canary {verdict} (canary/production: {', '.join(parts)})"


def decide(
    canary: VersionStats,
    production: VersionStats,
    agreement_rate: float | None,
    thresholds: Thresholds,
    *,
    require_traffic: bool = True,
) -> Verdict:
    """The verdict on a canary; `agreement_rate` None means it could not be measured
    (which fails the check: a canary is promoted only on evidence). Without
    `require_traffic`, too few events is reported but does not fail the canary."""
    numbers: dict[str, float] = {
        "canary_events": canary.events,
        "production_events": production.events,
        "canary_error_rate": canary.error_rate,
        "production_error_rate": production.error_rate,
        "score_ks": ks_statistic(canary.scores, production.scores),
    }
    for name, stats in (("canary", canary), ("production", production)):
        if stats.latency_p50 is not None and stats.latency_p95 is not None:
            numbers[f"{name}_latency_p50"] = stats.latency_p50
            numbers[f"{name}_latency_p95"] = stats.latency_p95
    if agreement_rate is not None:
        numbers["agreement"] = agreement_rate

    failures = []
    enough = min(canary.events, production.events) >= thresholds.min_events
    if not enough and require_traffic:
        failures.append(
            f"too little traffic ({canary.events} canary / {production.events} production "
            f"events, {thresholds.min_events} needed each)"
        )
    increase = canary.error_rate - production.error_rate
    if increase > thresholds.max_error_rate_increase:
        failures.append(
            f"error rate up by {increase:.4f} (max {thresholds.max_error_rate_increase})"
        )
    if canary.latency_p95 is not None and production.latency_p95 is not None:
        limit = (
            production.latency_p95 * thresholds.max_latency_ratio + thresholds.latency_slack_seconds
        )
        numbers["latency_p95_limit"] = limit
        if canary.latency_p95 > limit:
            failures.append(
                f"p95 latency {canary.latency_p95 * 1000:.1f} ms over {limit * 1000:.1f} ms"
            )
    if numbers["score_ks"] > thresholds.max_score_ks:
        failures.append(
            f"score distribution differs (KS {numbers['score_ks']:.3f} > {thresholds.max_score_ks})"
        )
    if agreement_rate is None:
        failures.append("agreement could not be measured")
    elif agreement_rate < thresholds.min_agreement:
        failures.append(f"agreement {agreement_rate:.3f} < {thresholds.min_agreement}")
    return Verdict(not failures, enough, tuple(failures), numbers)

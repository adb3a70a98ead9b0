"""Canary analysis math: event parsing, statistics, KS, agreement and the verdict."""

from __future__ import annotations

import numpy as np
import pytest

from kloop_worker.canary import (
    Sample,
    Thresholds,
    VersionStats,
    agreement,
    decide,
    ks_statistic,
    parse_event,
    split_samples,
    version_stats,
)

THRESHOLDS = Thresholds(
    min_events=10,
    max_error_rate_increase=0.01,
    max_latency_ratio=1.5,
    latency_slack_seconds=0.001,
    max_score_ks=0.3,
    min_agreement=0.8,
)


def event(**fields: str) -> dict[str, str]:
    base = {
        "model": "m",
        "alias": "canary",
        "version": "2",
        "score": "0.7",
        "latency_seconds": "0.002",
    }
    return {**base, **fields}


def test_parse_event() -> None:
    assert parse_event(event(), "m") == Sample("canary", "2", 0.7, 0.002)
    assert parse_event(event(), "other") is None
    assert parse_event(event(alias=""), "m") is None
    # Errors: an error field, no score, a score that is not a probability.
    for bad in (event(error="boom"), event(score="nan"), event(score="1.5"), event(score="x")):
        parsed = parse_event(bad, "m")
        assert parsed is not None and parsed.score is None
    parsed = parse_event(event(latency_seconds="-1"), "m")
    assert parsed is not None and parsed.latency_seconds is None


def test_version_stats() -> None:
    samples = [Sample("canary", "2", 0.1 * i, 0.001 * (i + 1)) for i in range(10)]
    samples.append(Sample("canary", "2", None, None))
    stats = version_stats(samples)
    assert (stats.events, stats.errors) == (11, 1)
    assert stats.error_rate == pytest.approx(1 / 11)
    assert stats.latency_p50 == pytest.approx(0.0055)
    assert stats.latency_p95 == pytest.approx(
        np.quantile([0.001 * (i + 1) for i in range(10)], 0.95)
    )
    assert version_stats([]) == VersionStats(0, 0, None, None, ())
    assert version_stats([]).error_rate == 0.0


def test_split_keeps_only_the_two_versions_under_their_aliases() -> None:
    samples = [
        Sample("canary", "2", 0.5, 0.01),
        Sample("production", "1", 0.5, 0.01),
        Sample("production", "2", 0.5, 0.01),  # v2 under production: not the baseline
        Sample("canary", "3", 0.5, 0.01),  # another canary version
        Sample("challenger", "1", 0.5, 0.01),
    ]
    canary, production = split_samples(samples, canary_version="2", production_version="1")
    assert (canary.events, production.events) == (1, 1)


def test_ks_statistic() -> None:
    assert ks_statistic([0.1, 0.2, 0.3], [0.1, 0.2, 0.3]) == 0.0
    assert ks_statistic([0.1, 0.2], [0.8, 0.9]) == 1.0
    assert ks_statistic([], [0.5]) == 0.0
    # Half of one sample lies below the other entirely.
    assert ks_statistic([0.1, 0.2, 0.8, 0.9], [0.7, 0.75, 0.8, 0.9]) == pytest.approx(0.5)
    rng = np.random.default_rng(0)
    a, b = rng.uniform(size=2000), rng.uniform(size=2000)
    assert ks_statistic(list(a), list(b)) < 0.05
    assert ks_statistic(list(a), list(b + 0.5)) > 0.4


def test_agreement() -> None:
    assert agreement([0.9, 0.1, 0.6, 0.4], [0.8, 0.2, 0.4, 0.4], 0.5) == 0.75
    assert agreement([], [], 0.5) == 1.0
    assert agreement([0.5], [0.49], 0.5) == 0.0  # the threshold itself is positive
    with pytest.raises(ValueError, match="paired"):
        agreement([0.1], [], 0.5)


def stats(n: int, *, errors: int = 0, latency: float = 0.002, center: float = 0.5) -> VersionStats:
    scores = tuple(float(x) for x in np.linspace(center - 0.2, center + 0.2, n - errors))
    return VersionStats(n, errors, latency, latency, scores)


def test_a_healthy_canary_passes_with_every_number() -> None:
    verdict = decide(stats(100), stats(900), 0.95, THRESHOLDS)
    assert verdict.passed and verdict.enough_traffic and verdict.failures == ()
    assert verdict.numbers["canary_events"] == 100 and verdict.numbers["agreement"] == 0.95
    assert verdict.numbers["latency_p95_limit"] == pytest.approx(0.002 * 1.5 + 0.001)
    summary = verdict.summary()
    assert summary.startswith("canary passed (canary/production: events 100/900")
    assert "p95 latency 2.0/2.0 ms" in summary and "agreement 0.950" in summary


@pytest.mark.parametrize(
    ("canary", "agreement_rate", "failure"),
    [
        (stats(5), 0.95, "too little traffic"),
        (stats(100, errors=5), 0.95, "error rate up by 0.0500"),
        (stats(100, latency=0.01), 0.95, "p95 latency 10.0 ms over 4.0 ms"),
        (stats(100, center=0.9), 0.95, "score distribution differs"),
        (stats(100), 0.5, "agreement 0.500 < 0.8"),
        (stats(100), None, "agreement could not be measured"),
    ],
)
def test_each_check_can_fail_the_canary(
    canary: VersionStats, agreement_rate: float | None, failure: str
) -> None:
    verdict = decide(canary, stats(900), agreement_rate, THRESHOLDS)
    assert not verdict.passed
    assert any(failure in f for f in verdict.failures), verdict.failures
    assert verdict.summary().startswith("canary failed: ")


def test_insufficient_traffic_only_reported_when_not_required() -> None:
    verdict = decide(stats(5), stats(900), 0.95, THRESHOLDS, require_traffic=False)
    assert verdict.passed and not verdict.enough_traffic


def test_errors_in_production_too_do_not_fail_the_canary() -> None:
    verdict = decide(stats(100, errors=5), stats(1000, errors=50), 0.95, THRESHOLDS)
    assert verdict.passed, verdict.failures

"""Drift statistics: properties (hypothesis) and agreement with scipy."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.spatial.distance import jensenshannon
from scipy.stats import ks_2samp

from kloop_drift_monitor.stats import (
    js_divergence,
    ks_critical_value,
    ks_from_counts,
    ks_samples,
    psi,
    psi_noise_floor,
)

counts = st.lists(st.integers(min_value=0, max_value=10_000), min_size=2, max_size=30)


def pairs(draw_nonzero: bool = True) -> st.SearchStrategy[tuple[list[int], list[int]]]:
    def build(draw: st.DrawFn) -> tuple[list[int], list[int]]:
        a = draw(counts)
        b = draw(st.lists(st.integers(0, 10_000), min_size=len(a), max_size=len(a)))
        if draw_nonzero:
            a[0] += 1
            b[-1] += 1
        return a, b

    return st.composite(build)()


samples = st.lists(
    st.floats(min_value=-1e6, max_value=1e6, allow_nan=False), min_size=1, max_size=200
)


@given(pairs())
def test_psi_is_non_negative_and_symmetric(pair: tuple[list[int], list[int]]) -> None:
    a, b = pair
    value = psi(a, b)
    assert value >= 0
    assert value == pytest.approx(psi(b, a), rel=1e-9, abs=1e-12)


@given(counts.filter(lambda c: sum(c) > 0), st.integers(1, 50))
def test_psi_is_zero_for_identical_distributions(c: list[int], scale: int) -> None:
    # Counts or fractions of the same distribution: no drift.
    assert psi(c, [x * scale for x in c]) == pytest.approx(0.0, abs=1e-12)


@given(pairs())
def test_ks_from_counts_is_in_unit_interval_and_symmetric(
    pair: tuple[list[int], list[int]],
) -> None:
    a, b = pair
    value = ks_from_counts(a, b)
    assert 0.0 <= value <= 1.0
    assert value == pytest.approx(ks_from_counts(b, a))
    assert ks_from_counts(a, a) == 0.0


@settings(deadline=None)
@given(pairs())
def test_js_is_bounded_symmetric_and_matches_scipy(pair: tuple[list[int], list[int]]) -> None:
    a, b = pair
    base2 = js_divergence(a, b)
    natural = js_divergence(a, b, base=math.e)
    assert 0.0 <= base2 <= 1.0
    assert 0.0 <= natural <= math.log(2) + 1e-12
    assert base2 == pytest.approx(js_divergence(b, a), abs=1e-12)
    # scipy returns the distance: the square root of the divergence.
    assert base2 == pytest.approx(jensenshannon(a, b, base=2) ** 2, abs=1e-9)
    assert js_divergence(a, a) == pytest.approx(0.0, abs=1e-12)


@pytest.mark.filterwarnings("ignore:ks_2samp")  # scipy's p-value method; the statistic is exact
@settings(max_examples=200, deadline=None)  # scipy's exact p-value can take a while
@given(samples, samples)
def test_ks_samples_matches_scipy(a: list[float], b: list[float]) -> None:
    value = ks_samples(a, b)
    assert 0.0 <= value <= 1.0
    assert value == pytest.approx(ks_2samp(a, b).statistic, abs=1e-12)


@given(samples, samples)
def test_binned_ks_never_exceeds_sample_ks(a: list[float], b: list[float]) -> None:
    edges = np.linspace(-1e6, 1e6 + 1, 11)
    binned = ks_from_counts(np.histogram(a, edges)[0], np.histogram(b, edges)[0])
    assert binned <= ks_samples(a, b) + 1e-12


def test_known_values() -> None:
    # PSI of (0.5, 0.5) vs (0.9, 0.1) without smoothing effects: 0.4 ln(1.8) + 0.4 ln(5).
    assert psi([50, 50], [90, 10], epsilon=1e-12) == pytest.approx(
        0.4 * math.log(1.8) + 0.4 * math.log(5), rel=1e-9
    )
    assert ks_from_counts([1, 0], [0, 1]) == 1.0
    assert js_divergence([1, 0], [0, 1]) == pytest.approx(1.0)
    # An empty bin on one side gives a large, finite value.
    assert 4 < psi([100, 0], [50, 50]) < math.inf


@pytest.mark.parametrize(
    ("call", "args"),
    [
        (psi, ([1, 2], [1, 2, 3])),
        (psi, ([1, -1], [1, 1])),
        (psi, ([1, float("nan")], [1, 1])),
        (ks_from_counts, ([0, 0], [1, 1])),
        (js_divergence, ([0, 0], [1, 1])),
        (ks_samples, ([], [1.0])),
    ],
)
def test_bad_input_is_refused(call, args) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError):
        call(*args)


P = np.array([0.3, 0.2, 0.15, 0.1, 0.1, 0.05, 0.05, 0.03, 0.02])


@settings(max_examples=50, deadline=None)
@given(n=st.integers(20, 2000), m=st.integers(20, 2000))
def test_noise_floors_shrink_as_samples_grow(n: int, m: int) -> None:
    cur = np.round(P * m)
    assert 0 < psi_noise_floor(P, cur * 4, 4 * n) < psi_noise_floor(P, cur, n)
    assert 0 < ks_critical_value(2 * n, m) < ks_critical_value(n, m)
    # Seeded: the same window gets the same threshold.
    assert psi_noise_floor(P, cur, n) == psi_noise_floor(P, cur, n)


def test_noise_floors_of_nothing_are_zero() -> None:
    assert psi_noise_floor([1.0], [5], 40) == psi_noise_floor(P, P * 100, 0) == 0.0
    assert psi_noise_floor(P, np.zeros(P.size), 40) == 0.0
    assert ks_critical_value(0, 200) == ks_critical_value(40, 0) == 0.0


@pytest.mark.parametrize(("n", "m"), [(40, 200), (200, 1000), (1000, 1000)])
def test_samples_of_one_distribution_stay_under_the_floors(n: int, m: int) -> None:
    # 99% floors: two samples of the same distribution exceed them rarely (seeded).
    rng = np.random.default_rng(7)
    trials, psi_over, ks_over = 300, 0, 0
    for _ in range(trials):
        ref, cur = rng.multinomial(n, P), rng.multinomial(m, P)
        psi_over += psi(ref, cur) > psi_noise_floor(ref, cur, n)
        ks_over += ks_from_counts(ref, cur) > ks_critical_value(n, m)
    assert psi_over / trials <= 0.03
    assert ks_over / trials <= 0.03
    if n == 40:  # ... while the fixed PSI threshold of 0.2 calls this noise drift
        noise = [psi(rng.multinomial(n, P), rng.multinomial(m, P)) for _ in range(200)]
        assert np.mean(np.array(noise) > 0.2) > 0.2


def test_a_real_shift_is_far_above_the_floors() -> None:
    ref, cur = np.array([8, 8, 8, 8, 8, 0, 0]), np.array([0, 0, 10, 10, 60, 60, 60])
    assert psi(ref, cur) > 3 * psi_noise_floor(ref, cur, 40)
    assert ks_from_counts(ref, cur) > 2 * ks_critical_value(40, 200)

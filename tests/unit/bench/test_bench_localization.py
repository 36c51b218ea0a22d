"""The bench's per-track interval: a difference that is there shows, one that is not holds 0."""

from __future__ import annotations

import numpy as np

from bench.bench_localization import median_diff_interval


def _walk(seed: int, noise_seed: int | None = None, n: int = 400) -> tuple[np.ndarray, np.ndarray]:
    """One walk's fix times and errors: a part shared by every estimator on that walk (correlated
    over seconds, as the room's shadowing is) and an estimator's own noise."""
    rng = np.random.default_rng(seed)
    t = np.sort(rng.uniform(0.0, 200.0, n))
    slow = np.interp(t, np.arange(0.0, 201.0, 5.0), rng.gamma(2.0, 0.6, 41))
    own = np.random.default_rng(seed if noise_seed is None else noise_seed)
    return t, slow + own.gamma(1.5, 0.3, n)


def test_same_errors_give_a_zero_interval() -> None:
    t, e = _walk(1)
    assert median_diff_interval((t, e), (t, e)) == (0.0, 0.0)


def test_a_constant_shift_is_found_exactly() -> None:
    t, e = _walk(2)
    lo, hi = median_diff_interval((t, e + 0.5), (t, e))
    assert abs(lo - 0.5) < 1e-9 and abs(hi - 0.5) < 1e-9


def test_two_estimators_of_equal_quality_are_not_told_apart() -> None:
    ta, ea = _walk(3, noise_seed=30)
    tb, eb = _walk(3, noise_seed=31)
    lo, hi = median_diff_interval((ta, ea), (tb, eb))
    assert lo < 0.0 < hi


def test_a_large_difference_excludes_zero() -> None:
    t, e = _walk(5)
    lo, hi = median_diff_interval((t, e * 2.0), (t, e))
    assert 0.0 < lo <= hi

"""The bench's per-track interval: a difference that is there shows, one that is not holds 0."""

from __future__ import annotations

import numpy as np

from bench.bench_localization import median_diff_interval, segments


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


def test_segments_of_a_walk_that_stands_walks_turns_and_walks() -> None:
    """Stand 10 s at the origin, walk 10 s along x at 0.5 m/s, turn on the spot to y, walk 10 s along y."""
    t = np.arange(0.0, 30.01, 0.1)
    x = np.clip(0.5 * (t - 10.0), 0.0, 5.0)
    y = np.clip(0.5 * (t - 20.0), 0.0, 5.0)
    truth = np.column_stack([t, x, y])
    seg = segments(truth, np.array([5.0, 15.0, 20.0, 25.0]))
    assert seg.tolist() == [0, 2, 1, 2]
